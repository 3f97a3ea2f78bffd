#include "memory/cuda_driver.hpp"

#include "core/error.hpp"
#include "memory/memory.hpp"

#include <dlfcn.h>

#include <mutex>

namespace phxfs::core::cuda {

namespace {

// The versioned symbol behind a cuda.h macro (cuMemcpyHtoDAsync is
// cuMemcpyHtoDAsync_v2, and so on): stringify after macro expansion.
#define PHXFS_STR2(x) #x
#define PHXFS_STR(x) PHXFS_STR2(x)

Driver loaded;
const Driver *usable = nullptr;
std::string why = "not probed";
std::once_flag once;

void load() {
    if (const char *off = std::getenv("PHXFS_NO_CUDA"); off && *off && *off != '0') {
        why = "CUDA disabled by PHXFS_NO_CUDA";
        return;
    }
    // Never dlclose: the driver stays for the life of the process.
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        why = "no CUDA driver (libcuda.so.1 not found)";
        return;
    }
#define PHXFS_CUDA_LOAD(name)                                                                      \
    loaded.name = reinterpret_cast<decltype(loaded.name)>(dlsym(h, PHXFS_STR(name)));              \
    if (!loaded.name) {                                                                            \
        why = "CUDA driver lacks " PHXFS_STR(name);                                                \
        return;                                                                                    \
    }
    PHXFS_CUDA_FUNCS(PHXFS_CUDA_LOAD)
#undef PHXFS_CUDA_LOAD
#define PHXFS_CUDA_LOAD_OPTIONAL(name)                                                             \
    loaded.name = reinterpret_cast<decltype(loaded.name)>(dlsym(h, PHXFS_STR(name)));
    PHXFS_CUDA_OPTIONAL_FUNCS(PHXFS_CUDA_LOAD_OPTIONAL)
#undef PHXFS_CUDA_LOAD_OPTIONAL
    if (CUresult r = loaded.cuInit(0); r != CUDA_SUCCESS) {
        const char *s = nullptr;
        loaded.cuGetErrorString(r, &s);
        why = std::string("cuInit failed: ") + (s ? s : "unknown error");
        return;
    }
    if (loaded.cuDeviceGetCount(&loaded.device_count) != CUDA_SUCCESS || loaded.device_count == 0) {
        why = "CUDA driver reports no GPU";
        return;
    }
    why.clear();
    usable = &loaded;
}

} // namespace

const Driver *driver() {
    std::call_once(once, load);
    return usable;
}

void forget_after_fork() {
    if (!usable)
        return; // never initialised here: the child may initialise CUDA itself
    usable = nullptr;
    why = "CUDA was initialised in the parent process before fork(), and a forked child cannot "
          "use it (fork before the first Phoenix or CUDA call, or start workers with spawn)";
}

const std::string &why_unavailable() {
    driver();
    return why;
}

void check(CUresult res, const char *what) {
    if (res == CUDA_SUCCESS)
        return;
    const char *s = nullptr;
    if (usable)
        usable->cuGetErrorString(res, &s);
    fail(EIO, std::string(what) + " failed: " + (s ? s : "CUDA error ") + "(" +
                  std::to_string(static_cast<int>(res)) + ")");
}

ContextScope::ContextScope(CUcontext ctx) {
    check(usable->cuCtxGetCurrent(&prev_), "cuCtxGetCurrent");
    if (prev_ == ctx)
        return;
    check(usable->cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
    switched_ = true;
}

ContextScope::~ContextScope() {
    if (switched_)
        usable->cuCtxSetCurrent(prev_); // back to the caller's; nothing to report to
}

} // namespace phxfs::core::cuda

namespace phxfs::core {

void cuda_after_fork_child() {
    cuda::forget_after_fork();
}

} // namespace phxfs::core
