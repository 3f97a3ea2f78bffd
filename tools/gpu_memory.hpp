// gpu_memory.hpp - CUDA device and pinned memory for the phxfs tools.
//
// The tools never link libcuda or libcudart: the CUDA driver API is loaded at
// run time with dlopen("libcuda.so.1"), so they run on machines without a GPU.
// Only the few calls the tools need (allocation, copies) are loaded.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace phxtools {

class Cuda {
  public:
    // The loaded driver with a primary context on CUDA device `ordinal`
    // (retained once per process), or nullptr; the reason is then in
    // why_unavailable(). Thread safe.
    static Cuda *get(int ordinal = 0);
    static std::string why_unavailable();

    // All calls make the context current on the calling thread and throw
    // std::runtime_error naming the failed call.
    void *alloc_device(size_t n);
    void free_device(void *p) noexcept;
    void *alloc_pinned(size_t n);
    void free_pinned(void *p) noexcept;
    void copy_to_host(void *dst, const void *device_src, size_t n);
    void copy_to_device(void *device_dst, const void *src, size_t n);

    struct Api; // the dlopened entry points
    // Use get(); public only for std::make_unique.
    Cuda(const Api *api, void *ctx) : api_(api), ctx_(ctx) {}

  private:
    void make_current();
    void check(int res, const char *what);
    const Api *api_;
    void *ctx_;
};

// Frees device or pinned memory through the driver.
struct CudaFree {
    Cuda *cuda = nullptr;
    bool pinned = false;
    void operator()(void *p) const noexcept {
        if (p && cuda)
            pinned ? cuda->free_pinned(p) : cuda->free_device(p);
    }
};
using CudaBuffer = std::unique_ptr<void, CudaFree>;

inline CudaBuffer cuda_alloc_device(Cuda &c, size_t n) {
    return CudaBuffer(c.alloc_device(n), CudaFree{&c, false});
}
inline CudaBuffer cuda_alloc_pinned(Cuda &c, size_t n) {
    return CudaBuffer(c.alloc_pinned(n), CudaFree{&c, true});
}

} // namespace phxtools
