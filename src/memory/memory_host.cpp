// The host backend: plain host memory stands in for device memory, on
// CPU-only machines and in tests. Staging still runs, so the compat pipeline
// is the same code with and without a GPU.
#include "memory/memory.hpp"

#include "core/error.hpp"

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
    StagingBuffer alloc_staging(size_t n) override {
        void *p = std::aligned_alloc(4096, (n + 4095) & ~size_t(4095));
        if (!p)
            fail(ENOMEM, "cannot allocate " + std::to_string(n) + " bytes of staging memory");
        return StagingBuffer(p, StagingFree{});
    }
    std::unique_ptr<Stream> make_stream() override { return std::make_unique<HostStream>(); }
    MemInfo check_range(const void *p, size_t) const override {
        if (!p)
            fail(EFAULT, "NULL buffer");
        const MemInfo mi = classify(p);
        if (mi.kind != MemKind::host)
            fail(EFAULT, "buffer is GPU memory, but the device is host memory");
        return mi;
    }
};

} // namespace

Stream &host_stream() {
    static HostStream s;
    return s;
}

std::unique_ptr<Backend> make_host_backend() {
    return std::make_unique<HostBackend>();
}

} // namespace phxfs::core
