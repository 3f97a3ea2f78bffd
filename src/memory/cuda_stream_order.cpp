// The GPU half of stream-ordered I/O (core/stream_io.hpp) over CUDA: the
// words and staging in pinned host memory mapped for every context, stream
// memory operations (cuStreamWriteValue32, cuStreamWaitValue32) for the
// words, and the copy kernel (stream_copy.cu) launched on the caller's
// stream. Only enqueue and phxfs_stream_register call in here, on the
// caller's thread; the service threads never do.
#include "core/error.hpp"
#include "core/stream_io.hpp"
#include "memory/cuda_driver.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

#ifdef PHXFS_HAVE_STREAM_COPY
extern const unsigned char phxfs_stream_copy_fatbin[];
#endif

namespace phxfs::core {

namespace {

const cuda::Driver &drv() {
    return *cuda::driver();
}

// As cuda::check, but a driver or GPU without the operation says ENOTSUP.
void check_op(CUresult res, const char *what) {
    if (res == CUDA_ERROR_NOT_SUPPORTED)
        fail(ENOTSUP, std::string(what) + ": not supported by this CUDA driver or GPU");
    cuda::check(res, what);
}

class CudaStreamOrder final : public StreamOrder {
  public:
    CudaStreamOrder() {
        cuda::check(drv().cuDeviceGet(&dev_, 0), "cuDeviceGet");
        cuda::check(drv().cuDevicePrimaryCtxRetain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
    }
    // Never runs for the process's instance (core/stream_io.cpp).
    ~CudaStreamOrder() override {
        if (!cuda::driver())
            return; // a child of fork(): the parent's
        cuda::ContextScope scope(ctx_);
        if (shared_)
            drv().cuMemFreeHost(shared_);
        drv().cuDevicePrimaryCtxRelease(dev_);
    }

    void *alloc_shared(size_t bytes) override {
        cuda::ContextScope scope(ctx_);
        void *p = nullptr;
        // Portable and mapped: every context reaches it, whichever owns a
        // caller's stream. The primary context stays retained for the life
        // of the process, so a caller's cudaDeviceReset never frees it.
        cuda::check(
            drv().cuMemHostAlloc(&p, bytes, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP),
            "cuMemHostAlloc (stream I/O words and staging)");
        std::memset(p, 0, bytes);
        CUdeviceptr d = 0;
        if (CUresult r = drv().cuMemHostGetDevicePointer(&d, p, 0); r != CUDA_SUCCESS) {
            drv().cuMemFreeHost(p);
            cuda::check(r, "cuMemHostGetDevicePointer (stream I/O)");
        }
        shared_ = p;
        shift_ = d - reinterpret_cast<CUdeviceptr>(p); // 0 with unified addressing
        return p;
    }

    uint64_t device_address(const void *p) const override {
        return reinterpret_cast<uint64_t>(p) + shift_;
    }

    void prepare(void *stream) override { (void)context(context_of(stream)); }

    // Made at the context's first request of over 16 KiB (or its stream's
    // registration), and kept for the life of the context (never freed: a cuMemFree could wait for
    // the GPU while requests are pending). Without the memory (cuMemAlloc failed), 0: the kernel
    // then reads the staging across the bus.
    uint64_t bounce(void *stream, size_t bytes) override {
        const CUcontext ctx = context_of(stream);
        PerContext &pc = context(ctx);
        std::lock_guard lock(m_);
        if (!pc.bounce_tried && drv().cuMemAlloc && drv().cuMemcpyHtoDAsync &&
            drv().cuMemcpyDtoHAsync) {
            pc.bounce_tried = true;
            cuda::ContextScope scope(ctx);
            CUdeviceptr d = 0;
            if (drv().cuMemAlloc(&d, bytes) == CUDA_SUCCESS)
                pc.bounce = d;
        }
        return pc.bounce;
    }

    void to_device(void *stream, uint64_t dst, const void *src, size_t n) override {
        cuda::ContextScope scope(context_of(stream));
        cuda::check(drv().cuMemcpyHtoDAsync(dst, src, n, static_cast<CUstream>(stream)),
                    "cuMemcpyHtoDAsync (stream I/O staging)");
    }

    void to_host(void *stream, void *dst, uint64_t src, size_t n) override {
        cuda::ContextScope scope(context_of(stream));
        cuda::check(drv().cuMemcpyDtoHAsync(dst, src, n, static_cast<CUstream>(stream)),
                    "cuMemcpyDtoHAsync (stream I/O staging)");
    }

    void write(void *stream, uint32_t *word, uint32_t v) override {
        CUstream s = static_cast<CUstream>(stream);
        cuda::ContextScope scope(context_of(stream));
        check_op(
            drv().cuStreamWriteValue32(s, device_address(word), v, CU_STREAM_WRITE_VALUE_DEFAULT),
            "cuStreamWriteValue32");
    }

    void wait(void *stream, uint32_t *word, uint32_t v) override {
        CUstream s = static_cast<CUstream>(stream);
        cuda::ContextScope scope(context_of(stream));
        check_op(drv().cuStreamWaitValue32(s, device_address(word), v, CU_STREAM_WAIT_VALUE_GEQ),
                 "cuStreamWaitValue32");
    }

    void copy(void *stream, StreamRecord *rec, uint32_t gen, size_t max_bytes) override {
        const CUcontext ctx = context_of(stream);
        CUfunction fn = context(ctx).fn;
        cuda::ContextScope scope(ctx);
        CUdeviceptr r = device_address(rec);
        unsigned g = gen;
        void *args[] = {&r, &g};
        // 16 KiB a block per pass (256 threads, 16 bytes, 4 passes): one
        // block for 4 KiB, 256 for 4 MiB, enough loads in flight to cross
        // PCIe at speed.
        constexpr size_t kPerBlock = 16 << 10;
        const auto blocks = static_cast<unsigned>(
            std::clamp<size_t>((max_bytes + kPerBlock - 1) / kPerBlock, 1, 1024));
        cuda::check(drv().cuLaunchKernel(fn, blocks, 1, 1, 256, 1, 1, 0,
                                         static_cast<CUstream>(stream), args, nullptr),
                    "cuLaunchKernel (stream copy)");
    }

  private:
    // The context that owns stream (the caller's current one for the
    // default streams).
    static CUcontext context_of(void *stream) {
        CUcontext c = nullptr;
        if (drv().cuStreamGetCtx(static_cast<CUstream>(stream), &c) != CUDA_SUCCESS || !c)
            fail(EINVAL, "the stream has no CUDA context (not a valid stream, or a default "
                         "stream on a thread with no current context)");
        return c;
    }

    // What a context's requests need: the copy kernel, and the staging's
    // copy in its memory (bounce()).
    struct PerContext {
        CUfunction fn = nullptr;
        CUdeviceptr bounce = 0;
        bool bounce_tried = false;
    };

    // ctx's, its kernel loaded the first time: on the thread that meets ctx
    // first, before its first request queues anything.
    PerContext &context(CUcontext ctx) {
        unsigned long long key = reinterpret_cast<uintptr_t>(ctx);
        if (drv().cuCtxGetId) // ids are never reused; context addresses may be
            cuda::check(drv().cuCtxGetId(ctx, &key), "cuCtxGetId");
        std::lock_guard lock(m_);
        if (auto it = contexts_.find(key); it != contexts_.end())
            return it->second;
#ifdef PHXFS_HAVE_STREAM_COPY
        cuda::ContextScope scope(ctx);
        CUmodule module = nullptr;
        check_op(drv().cuModuleLoadData(&module, phxfs_stream_copy_fatbin),
                 "cuModuleLoadData (stream copy kernel)");
        CUfunction fn = nullptr;
        cuda::check(drv().cuModuleGetFunction(&fn, module, "phxfs_stream_copy"),
                    "cuModuleGetFunction (phxfs_stream_copy)");
        // Loaded now, not at its first launch (lazy loading), which might
        // come while requests of this context are pending.
        if (drv().cuFuncLoad)
            cuda::check(drv().cuFuncLoad(fn), "cuFuncLoad (phxfs_stream_copy)");
        // The module stays for the life of the context; std::map's
        // elements stay where they are.
        return contexts_.emplace(key, PerContext{fn}).first->second;
#else
        fail(ENOTSUP, "stream-ordered I/O needs its copy kernel, and this libphxfs was built "
                      "without nvcc");
#endif
    }

    CUdevice dev_ = 0;
    CUcontext ctx_ = nullptr; // device 0's primary context, which owns the shared memory
    void *shared_ = nullptr;
    CUdeviceptr shift_ = 0; // device address - host address
    std::mutex m_;          // contexts_; held only by enqueuing threads
    std::map<unsigned long long, PerContext> contexts_;
};

} // namespace

std::unique_ptr<StreamOrder> make_cuda_stream_order() {
    const cuda::Driver *d = cuda::driver();
    if (!d)
        fail(ENOTSUP, "stream-ordered I/O needs a CUDA driver: " + cuda::why_unavailable());
#ifndef PHXFS_HAVE_STREAM_COPY
    fail(ENOTSUP, "stream-ordered I/O needs its copy kernel, and this libphxfs was built without "
                  "nvcc");
#endif
    if (!d->cuStreamWriteValue32 || !d->cuStreamWaitValue32 || !d->cuStreamGetCtx ||
        !d->cuMemHostGetDevicePointer || !d->cuModuleLoadData || !d->cuModuleGetFunction ||
        !d->cuLaunchKernel)
        fail(ENOTSUP, "stream-ordered I/O needs stream memory operations and kernel launches, "
                      "which this CUDA driver lacks (cuStreamWriteValue32, cuStreamWaitValue32, "
                      "cuLaunchKernel)");
    return std::make_unique<CudaStreamOrder>();
}

} // namespace phxfs::core
