// Device-memory backends: where a buffer lives, how staging memory is
// allocated, and how bytes move between staging and the buffer.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace phxfs::core {

enum class MemKind { host, cuda };

// What an address is, detected from the address itself.
struct MemInfo {
    MemKind kind = MemKind::host;
    int cuda_ordinal = -1; // for MemKind::cuda
    bool managed = false;  // cudaMallocManaged: every GPU's context may copy to it
};

MemInfo classify(const void *p);

// The cross-device rule: memory of one GPU (cudaMalloc, the virtual memory
// API) goes only with that GPU's device id; it is never routed to the GPU
// that owns it. Throws Error(EXDEV), naming the owner and the id to use,
// when mi is such memory and the device, which serves CUDA GPU `ordinal`
// (-1: a device of host memory), is not its GPU. Host memory goes with any
// device, managed memory with any GPU's.
void check_owner(const MemInfo &mi, int ordinal);

// An ordered queue of copies between staging memory and a buffer. Copies may
// run asynchronously until wait().
class Stream {
  public:
    // One copy of a group.
    struct Copy {
        void *dst;
        const void *src;
        size_t n;
    };
    virtual ~Stream() = default;
    virtual void to_buffer(void *dst, const void *staging, size_t n) = 0;
    virtual void to_staging(void *staging, const void *src, size_t n) = 0;
    // Many copies in one direction, queued as few operations as the device
    // allows (one, where its driver copies a batch); each as to_buffer or
    // to_staging would do it.
    virtual void to_buffers(const Copy *copies, size_t n) {
        for (size_t i = 0; i < n; ++i)
            to_buffer(copies[i].dst, copies[i].src, copies[i].n);
    }
    virtual void to_stagings(const Copy *copies, size_t n) {
        for (size_t i = 0; i < n; ++i)
            to_staging(copies[i].dst, copies[i].src, copies[i].n);
    }
    virtual void wait() = 0;
};

// Host memory: copies are memcpy, done at once.
Stream &host_stream();

// Frees staging memory: malloc'ed, or pinned by CUDA in context cuda_ctx
// (a CUcontext), which freeing needs current.
struct StagingFree {
    void *cuda_ctx = nullptr;
    void operator()(void *p) const noexcept;
};
using StagingBuffer = std::unique_ptr<void, StagingFree>;

// A device's memory system: the host, or one CUDA GPU.
class Backend {
  public:
    virtual ~Backend() = default;
    virtual StagingBuffer alloc_staging(size_t n) = 0;
    // A stream for buffers of this backend's kind.
    virtual std::unique_ptr<Stream> make_stream() = 0;
    // Makes the bytes a direct read (the SSD's DMA into the device) wrote
    // visible to the device's later work, where its platform does not order
    // such writes by itself.
    virtual void after_direct_read() {}
    // Throws Error(EFAULT) unless [p, p + n) is memory this backend serves;
    // returns what the memory is (classify(p)).
    virtual MemInfo check_range(const void *p, size_t n) const = 0;
};

// numa_node: where the device's staging memory should come from (the node
// its PCI device hangs off, memory/numa.hpp), -1 for anywhere.
std::unique_ptr<Backend> make_host_backend(int numa_node = -1);
std::unique_ptr<Backend> make_cuda_backend(int ordinal, int numa_node = -1);

struct GpuInfo {
    std::string name;
    std::string pci_bus_id; // lower case, "0000:3b:00.0"
};
// The CUDA GPUs of this machine in CUDA's order; empty without a driver.
std::vector<GpuInfo> cuda_gpus();
// Why there are no CUDA GPUs ("" when there are).
std::string cuda_why_unavailable();
// In a child of fork(): CUDA, if the parent initialised it, is unusable.
void cuda_after_fork_child();

} // namespace phxfs::core
