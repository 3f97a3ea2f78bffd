// Stream order over CUDA's stream memory operations: a request's "reached"
// word is written by cuStreamWriteValue32 and its stream waits on its
// "done" word with cuStreamWaitValue32; the words are pinned host memory
// mapped for every context (core/stream_io.hpp).
#include "core/error.hpp"
#include "core/stream_io.hpp"
#include "memory/cuda_driver.hpp"
#include "memory/memory.hpp"

#include <cstring>

namespace phxfs::core {

namespace {

const cuda::Driver &drv() {
    return *cuda::driver();
}

class CudaStreamOrder final : public StreamOrder {
  public:
    CudaStreamOrder() {
        cuda::check(drv().cuDeviceGet(&dev_, 0), "cuDeviceGet");
        cuda::check(drv().cuDevicePrimaryCtxRetain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
    }
    ~CudaStreamOrder() override {
        if (!cuda::driver())
            return; // a child of fork(): the parent's
        if (words_) {
            cuda::ContextScope scope(ctx_);
            drv().cuMemFreeHost(words_);
        }
        drv().cuDevicePrimaryCtxRelease(dev_);
    }

    uint32_t *alloc_words(size_t n) override {
        cuda::ContextScope scope(ctx_);
        void *p = nullptr;
        // Portable: mapped in every context, whichever owns a caller's stream.
        cuda::check(drv().cuMemHostAlloc(&p, n * sizeof(uint32_t),
                                         CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP),
                    "cuMemHostAlloc (stream words)");
        std::memset(p, 0, n * sizeof(uint32_t));
        words_ = p;
        CUdeviceptr d = 0;
        if (drv().cuMemHostGetDevicePointer &&
            drv().cuMemHostGetDevicePointer(&d, p, 0) == CUDA_SUCCESS)
            shift_ = d - reinterpret_cast<CUdeviceptr>(p);
        return static_cast<uint32_t *>(p);
    }

    void signal(void *stream, uint32_t *word, uint32_t v) override {
        CUstream s = static_cast<CUstream>(stream);
        cuda::ContextScope scope(stream_ctx(s));
        cuda::check(drv().cuStreamWriteValue32(s, device_address(word), v, 0),
                    "cuStreamWriteValue32");
    }

    void wait(void *stream, uint32_t *word, uint32_t v) override {
        CUstream s = static_cast<CUstream>(stream);
        cuda::ContextScope scope(stream_ctx(s));
        cuda::check(drv().cuStreamWaitValue32(s, device_address(word), v, CU_STREAM_WAIT_VALUE_GEQ),
                    "cuStreamWaitValue32");
    }

  private:
    // The context that owns s (the caller's current one for the default
    // streams): memory operations are queued with it current.
    static CUcontext stream_ctx(CUstream s) {
        CUcontext c = nullptr;
        if (drv().cuStreamGetCtx(s, &c) != CUDA_SUCCESS || !c)
            fail(EINVAL, "the stream has no CUDA context (not a valid stream, or a default "
                         "stream on a thread with no current context)");
        return c;
    }
    CUdeviceptr device_address(uint32_t *w) const {
        return reinterpret_cast<CUdeviceptr>(w) + shift_;
    }

    CUdevice dev_ = 0;
    CUcontext ctx_ = nullptr;
    void *words_ = nullptr;
    CUdeviceptr shift_ = 0; // device address - host address (0 with unified addressing)
};

} // namespace

std::unique_ptr<StreamOrder> make_cuda_stream_order() {
    const cuda::Driver *d = cuda::driver();
    if (!d)
        fail(ENOTSUP, "stream-ordered I/O needs a CUDA driver: " + cuda::why_unavailable());
    if (!d->cuStreamWriteValue32 || !d->cuStreamWaitValue32 || !d->cuStreamGetCtx)
        fail(ENOTSUP, "stream-ordered I/O needs stream memory operations, which this CUDA "
                      "driver lacks (cuStreamWriteValue32, cuStreamWaitValue32)");
    return std::make_unique<CudaStreamOrder>();
}

} // namespace phxfs::core
