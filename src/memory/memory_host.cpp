// The host backend: plain host memory stands in for device memory, on
// CPU-only machines and in tests. Staging still runs, so the compat pipeline
// is the same code with and without a GPU.
#include "memory/memory.hpp"

#include "core/error.hpp"
#include "memory/numa.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

namespace phxfs::core {

namespace {

class HostStream final : public Stream {
  public:
    void to_buffer(void *dst, const void *staging, size_t n) override {
        std::memcpy(dst, staging, n);
    }
    void to_staging(void *staging, const void *src, size_t n) override {
        std::memcpy(staging, src, n);
    }
    void wait() override {}
};

class HostBackend final : public Backend {
  public:
    explicit HostBackend(int numa_node) : numa_node_(numa_node) {}
    StagingBuffer alloc_staging(size_t n) override {
        const size_t len = (n + 4095) & ~size_t(4095);
        // Near the device (a pcibar BAR's node): faulted in here, under the
        // policy, rather than wherever a worker first touches it.
        PreferredNode near(numa_node_);
        void *p = std::aligned_alloc(4096, len);
        if (!p)
            fail(ENOMEM, "cannot allocate " + std::to_string(n) + " bytes of staging memory");
        if (near.active())
            std::memset(p, 0, len);
        return StagingBuffer(p, StagingFree{});
    }
    std::unique_ptr<Stream> make_stream() override { return std::make_unique<HostStream>(); }
    MemInfo check_range(const void *p, size_t) const override {
        if (!p)
            fail(EFAULT, "NULL buffer");
        const MemInfo mi = classify(p);
        check_owner(mi, -1);
        return mi;
    }

  private:
    int numa_node_;
};

} // namespace

void check_owner(const MemInfo &mi, int ordinal) {
    if (mi.kind != MemKind::cuda || mi.cuda_ordinal == ordinal || (mi.managed && ordinal >= 0))
        return;
    const std::string owner = mi.managed ? "managed memory (usable with any GPU's device id)"
                                         : "memory of GPU " + std::to_string(mi.cuda_ordinal) +
                                               " (phxfs device id " +
                                               std::to_string(mi.cuda_ordinal) + ")";
    const std::string dev =
        ordinal < 0 ? std::string("a device of host memory") : "GPU " + std::to_string(ordinal);
    fail(EXDEV, "buffer is " + owner + ", but this device is " + dev +
                    (mi.managed ? std::string()
                                : ": pass the buffer's own device id (each device stages and "
                                  "copies its own memory; nothing is routed to another device)"));
}

Stream &host_stream() {
    static HostStream s;
    return s;
}

std::unique_ptr<Backend> make_host_backend(int numa_node) {
    return std::make_unique<HostBackend>(numa_node);
}

} // namespace phxfs::core
