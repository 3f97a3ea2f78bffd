// The CUDA driver API, loaded at run time with dlopen so that libphxfs and
// its tests load on machines without a GPU. Only the calls Phoenix needs.
#pragma once

#include <cuda.h>

#include <string>

namespace phxfs::core::cuda {

#define PHXFS_CUDA_FUNCS(X)                                                                        \
    X(cuInit)                                                                                      \
    X(cuDriverGetVersion)                                                                          \
    X(cuGetErrorString)                                                                            \
    X(cuDeviceGetCount)                                                                            \
    X(cuDeviceGet)                                                                                 \
    X(cuDeviceGetName)                                                                             \
    X(cuDeviceGetPCIBusId)                                                                         \
    X(cuDeviceGetAttribute)                                                                        \
    X(cuFlushGPUDirectRDMAWrites)                                                                  \
    X(cuDevicePrimaryCtxRetain)                                                                    \
    X(cuDevicePrimaryCtxRelease)                                                                   \
    X(cuCtxGetCurrent)                                                                             \
    X(cuCtxSetCurrent)                                                                             \
    X(cuPointerGetAttributes)                                                                      \
    X(cuMemGetAddressRange)                                                                        \
    X(cuMemRetainAllocationHandle)                                                                 \
    X(cuMemRelease)                                                                                \
    X(cuMemGetAccess)                                                                              \
    X(cuMemHostAlloc)                                                                              \
    X(cuMemFreeHost)                                                                               \
    X(cuStreamCreate)                                                                              \
    X(cuStreamDestroy)                                                                             \
    X(cuStreamSynchronize)                                                                         \
    X(cuMemcpyHtoDAsync)                                                                           \
    X(cuMemcpyDtoHAsync)

// Calls the library does without where a driver lacks them (older drivers:
// cuMemcpyBatchAsync is CUDA 12.8+; the VM suite's stand-in driver: the
// module calls, which only the scatter and stream copy kernels need; the
// stream memory operations and the rest, which only stream-ordered I/O
// needs; the stream query and events, without which a lane's wait is
// cuStreamSynchronize).
#define PHXFS_CUDA_OPTIONAL_FUNCS(X)                                                               \
    X(cuMemcpyBatchAsync)                                                                          \
    X(cuMemAlloc)                                                                                  \
    X(cuMemFree)                                                                                   \
    X(cuModuleLoadData)                                                                            \
    X(cuModuleUnload)                                                                              \
    X(cuModuleGetFunction)                                                                         \
    X(cuLaunchKernel)                                                                              \
    X(cuFuncLoad)                                                                                  \
    X(cuCtxGetId)                                                                                  \
    X(cuMemHostGetDevicePointer)                                                                   \
    X(cuStreamGetCtx)                                                                              \
    X(cuStreamWriteValue32)                                                                        \
    X(cuStreamWaitValue32)                                                                         \
    X(cuStreamQuery)                                                                               \
    X(cuEventCreate)                                                                               \
    X(cuEventDestroy)                                                                              \
    X(cuEventRecord)                                                                               \
    X(cuEventSynchronize)

struct Driver {
#define PHXFS_CUDA_MEMBER(name) decltype(&::name) name = nullptr;
    PHXFS_CUDA_FUNCS(PHXFS_CUDA_MEMBER)
    PHXFS_CUDA_OPTIONAL_FUNCS(PHXFS_CUDA_MEMBER)
#undef PHXFS_CUDA_MEMBER
    int device_count = 0;
};

// The loaded and initialised driver, or nullptr when none is usable; the
// reason is then in why_unavailable(). Thread safe; loads once.
const Driver *driver();
const std::string &why_unavailable();
// In a child of fork(): a driver the parent initialised is unusable here.
void forget_after_fork();

// Throws Error(EIO) naming the call when res is not CUDA_SUCCESS.
void check(CUresult res, const char *what);

// Makes ctx current on the calling thread for its lifetime, then puts back
// whatever was current before (the caller's own context, another GPU's, or
// none): the library never leaves a caller's thread changed.
class ContextScope {
  public:
    explicit ContextScope(CUcontext ctx);
    ~ContextScope();
    ContextScope(const ContextScope &) = delete;
    ContextScope &operator=(const ContextScope &) = delete;

  private:
    CUcontext prev_ = nullptr;
    bool switched_ = false;
};

} // namespace phxfs::core::cuda
