// gpu_memory.cpp - the CUDA driver API, loaded at run time (see gpu_memory.hpp).
#include "gpu_memory.hpp"

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>

namespace phxtools {

// The driver API's types, declared here so that the tools build without the
// CUDA headers. They match cuda.h on 64-bit Linux.
namespace {
using CUresult = int;
using CUdevice = int;
using CUcontext = void *;
using CUdeviceptr = unsigned long long;
constexpr CUresult CUDA_SUCCESS = 0;
} // namespace

struct Cuda::Api {
    CUresult (*cuInit)(unsigned);
    CUresult (*cuGetErrorString)(CUresult, const char **);
    CUresult (*cuDeviceGetCount)(int *);
    CUresult (*cuDeviceGet)(CUdevice *, int);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*cuCtxSetCurrent)(CUcontext);
    CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
    CUresult (*cuMemFree)(CUdeviceptr);
    CUresult (*cuMemHostAlloc)(void **, size_t, unsigned);
    CUresult (*cuMemFreeHost)(void *);
    CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t);
    CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
    int device_count = 0;
};

namespace {

std::mutex mu;
bool loaded = false;
Cuda::Api api;
std::string why = "not probed";
std::map<int, std::unique_ptr<Cuda>> contexts; // per ordinal, for the process

template <typename F> bool sym(void *h, F &f, const char *name) {
    f = reinterpret_cast<F>(dlsym(h, name));
    if (!f)
        why = std::string("CUDA driver lacks ") + name;
    return f != nullptr;
}

bool load_locked() {
    if (loaded)
        return why.empty();
    loaded = true;
    if (const char *off = std::getenv("PHXFS_NO_CUDA"); off && *off && *off != '0') {
        why = "CUDA disabled by PHXFS_NO_CUDA";
        return false;
    }
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL); // never closed
    if (!h) {
        why = "no CUDA driver (libcuda.so.1 not found)";
        return false;
    }
    if (!sym(h, api.cuInit, "cuInit") || !sym(h, api.cuGetErrorString, "cuGetErrorString") ||
        !sym(h, api.cuDeviceGetCount, "cuDeviceGetCount") ||
        !sym(h, api.cuDeviceGet, "cuDeviceGet") ||
        !sym(h, api.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain") ||
        !sym(h, api.cuCtxSetCurrent, "cuCtxSetCurrent") ||
        !sym(h, api.cuMemAlloc, "cuMemAlloc_v2") || !sym(h, api.cuMemFree, "cuMemFree_v2") ||
        !sym(h, api.cuMemHostAlloc, "cuMemHostAlloc") ||
        !sym(h, api.cuMemFreeHost, "cuMemFreeHost") ||
        !sym(h, api.cuMemcpyDtoH, "cuMemcpyDtoH_v2") ||
        !sym(h, api.cuMemcpyHtoD, "cuMemcpyHtoD_v2"))
        return false;
    if (api.cuInit(0) != CUDA_SUCCESS) {
        why = "cuInit failed";
        return false;
    }
    if (api.cuDeviceGetCount(&api.device_count) != CUDA_SUCCESS || api.device_count == 0) {
        why = "CUDA driver reports no GPU";
        return false;
    }
    why.clear();
    return true;
}

} // namespace

Cuda *Cuda::get(int ordinal) {
    std::lock_guard lock(mu);
    if (!load_locked())
        return nullptr;
    if (auto it = contexts.find(ordinal); it != contexts.end())
        return it->second.get();
    CUdevice dev = 0;
    CUcontext ctx = nullptr;
    if (ordinal < 0 || ordinal >= api.device_count || api.cuDeviceGet(&dev, ordinal) != 0 ||
        api.cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS)
        return nullptr;
    // The primary context is never released: it lives as long as the process.
    auto c = std::make_unique<Cuda>(&api, ctx);
    return contexts.emplace(ordinal, std::move(c)).first->second.get();
}

std::string Cuda::why_unavailable() {
    std::lock_guard lock(mu);
    load_locked();
    return why;
}

void Cuda::check(int res, const char *what) {
    if (res == CUDA_SUCCESS)
        return;
    const char *s = nullptr;
    api_->cuGetErrorString(res, &s);
    throw std::runtime_error(std::string(what) + " failed: " + (s ? s : "CUDA error") + " (" +
                             std::to_string(res) + ")");
}

void Cuda::make_current() {
    thread_local void *current = nullptr;
    if (current != ctx_) {
        check(api_->cuCtxSetCurrent(ctx_), "cuCtxSetCurrent");
        current = ctx_;
    }
}

void *Cuda::alloc_device(size_t n) {
    make_current();
    CUdeviceptr p = 0;
    check(api_->cuMemAlloc(&p, n), "cuMemAlloc");
    return reinterpret_cast<void *>(static_cast<uintptr_t>(p));
}

void Cuda::free_device(void *p) noexcept {
    try {
        make_current();
        api_->cuMemFree(reinterpret_cast<uintptr_t>(p));
    } catch (...) {
    }
}

void *Cuda::alloc_pinned(size_t n) {
    make_current();
    void *p = nullptr;
    check(api_->cuMemHostAlloc(&p, n, 0), "cuMemHostAlloc");
    return p;
}

void Cuda::free_pinned(void *p) noexcept {
    try {
        make_current();
        api_->cuMemFreeHost(p);
    } catch (...) {
    }
}

void Cuda::copy_to_host(void *dst, const void *device_src, size_t n) {
    make_current();
    check(api_->cuMemcpyDtoH(dst, reinterpret_cast<uintptr_t>(device_src), n), "cuMemcpyDtoH");
}

void Cuda::copy_to_device(void *device_dst, const void *src, size_t n) {
    make_current();
    check(api_->cuMemcpyHtoD(reinterpret_cast<uintptr_t>(device_dst), src, n), "cuMemcpyHtoD");
}

} // namespace phxtools
