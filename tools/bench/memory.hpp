// memory.hpp - the per-thread I/O buffers of phxfs-bench: device, pinned or
// pageable memory, registered with libphxfs, with copies to and from host
// memory for pattern fills and verification.
#pragma once

#include "../gpu_memory.hpp"
#include "options.hpp"

#include <phxfs/phxfs.h>

#include <cstdlib>
#include <memory>
#include <string>

namespace phxbench {

struct FreeDeleter {
    void operator()(void *p) const noexcept { std::free(p); }
};
using HostBuffer = std::unique_ptr<uint8_t[], FreeDeleter>;

// Page-aligned host memory (rounded up to whole pages); throws std::bad_alloc.
HostBuffer alloc_host(size_t n);

// What device `device` is, from phxfs_device_get_info; throws on failure.
phxfs_device_info device_info(int device);

class IoBuffer {
  public:
    // Allocates n bytes of `mem` memory for phxfs device `device` and
    // registers it there (unless register_it is false).
    IoBuffer(int device, MemType mem, size_t n, bool register_it);
    ~IoBuffer();
    IoBuffer(const IoBuffer &) = delete;
    IoBuffer &operator=(const IoBuffer &) = delete;

    void *data() const { return ptr_; }
    size_t size() const { return n_; }
    bool on_gpu() const { return gpu_; }
    bool registered() const { return registered_; }
    // Why the buffer is not registered ("" when it is, or was not asked to be).
    const std::string &why_unregistered() const { return why_unregistered_; }

    // Copies n bytes at offset off of the buffer to/from host memory.
    void to_host(void *dst, size_t off, size_t n) const;
    void from_host(const void *src, size_t off, size_t n);

  private:
    int device_;
    size_t n_;
    bool gpu_ = false;
    bool registered_ = false;
    std::string why_unregistered_;
    phxtools::Cuda *cuda_ = nullptr;
    phxtools::CudaBuffer cuda_mem_;
    HostBuffer host_mem_;
    bool locked_ = false;
    void *ptr_ = nullptr;
};

} // namespace phxbench
