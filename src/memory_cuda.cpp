// The CUDA backend: buffers are CUDA device memory of one GPU; staging is
// pinned host memory; copies are asynchronous on a stream of the GPU's
// primary context.
#include "cuda_driver.hpp"
#include "error.hpp"
#include "memory.hpp"

#include <cctype>
#include <cstdlib>

namespace phxfs::core {

namespace {

const cuda::Driver &drv() {
    return *cuda::driver();
}

class CudaStream final : public Stream {
  public:
    explicit CudaStream(CUcontext ctx) : ctx_(ctx) {
        cuda::ContextScope scope(ctx_);
        cuda::check(drv().cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    }
    ~CudaStream() override {
        try {
            cuda::ContextScope scope(ctx_);
            drv().cuStreamDestroy(stream_);
        } catch (const Error &) { // the context is gone, and the stream with it
        }
    }
    void to_buffer(void *dst, const void *staging, size_t n) override {
        cuda::ContextScope scope(ctx_);
        cuda::check(
            drv().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(dst), staging, n, stream_),
            "cuMemcpyHtoDAsync");
    }
    void to_staging(void *staging, const void *src, size_t n) override {
        cuda::ContextScope scope(ctx_);
        cuda::check(
            drv().cuMemcpyDtoHAsync(staging, reinterpret_cast<CUdeviceptr>(src), n, stream_),
            "cuMemcpyDtoHAsync");
    }
    void wait() override {
        cuda::ContextScope scope(ctx_);
        cuda::check(drv().cuStreamSynchronize(stream_), "cuStreamSynchronize");
    }

  private:
    CUcontext ctx_;
    CUstream stream_ = nullptr;
};

class CudaBackend final : public Backend {
  public:
    explicit CudaBackend(int ordinal) : ordinal_(ordinal) {
        cuda::check(drv().cuDeviceGet(&dev_, ordinal), "cuDeviceGet");
        cuda::check(drv().cuDevicePrimaryCtxRetain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
    }
    ~CudaBackend() override { drv().cuDevicePrimaryCtxRelease(dev_); }

    StagingBuffer alloc_staging(size_t n) override {
        cuda::ContextScope scope(ctx_);
        void *p = nullptr;
        cuda::check(drv().cuMemHostAlloc(&p, n, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc");
        return StagingBuffer(p, StagingFree{ctx_});
    }
    std::unique_ptr<Stream> make_stream() override { return std::make_unique<CudaStream>(ctx_); }
    MemInfo check_range(const void *p, size_t n) const override {
        if (!p)
            fail(EFAULT, "NULL buffer");
        const MemInfo mi = classify(p);
        if (mi.kind != MemKind::cuda)
            return mi; // host memory is always usable
        if (mi.cuda_ordinal != ordinal_)
            fail(EFAULT, "buffer belongs to GPU " + std::to_string(mi.cuda_ordinal) + ", not GPU " +
                             std::to_string(ordinal_));
        // The lookup needs a context, which the caller's thread may lack.
        cuda::ContextScope scope(ctx_);
        CUdeviceptr base = 0;
        size_t size = 0;
        cuda::check(drv().cuMemGetAddressRange(&base, &size, reinterpret_cast<CUdeviceptr>(p)),
                    "cuMemGetAddressRange of the buffer");
        if (reinterpret_cast<CUdeviceptr>(p) + n > base + size)
            fail(EFAULT, "range runs past the end of its cudaMalloc allocation");
        return mi;
    }

  private:
    int ordinal_;
    CUdevice dev_ = 0;
    CUcontext ctx_ = nullptr;
};

} // namespace

void StagingFree::operator()(void *p) const noexcept {
    if (!cuda_ctx) {
        std::free(p);
        return;
    }
    try {
        cuda::ContextScope scope(static_cast<CUcontext>(cuda_ctx));
        drv().cuMemFreeHost(p);
    } catch (const Error &) { // no context left to free it in: gone with it
    }
}

MemInfo classify(const void *p) {
    const cuda::Driver *d = cuda::driver();
    if (!d || !p)
        return {};
    CUmemorytype type{};
    int ordinal = -1;
    unsigned managed = 0;
    CUpointer_attribute attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                   CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                   CU_POINTER_ATTRIBUTE_IS_MANAGED};
    void *data[] = {&type, &ordinal, &managed};
    // Pageable host memory unknown to CUDA fails or reports no type: host.
    if (d->cuPointerGetAttributes(3, attrs, data, reinterpret_cast<CUdeviceptr>(p)) != CUDA_SUCCESS)
        return {};
    if (type == CU_MEMORYTYPE_DEVICE || managed)
        return {MemKind::cuda, ordinal};
    return {};
}

std::vector<GpuInfo> cuda_gpus() {
    std::vector<GpuInfo> out;
    const cuda::Driver *d = cuda::driver();
    for (int i = 0; d && i < d->device_count; ++i) {
        CUdevice dev = 0;
        char name[64] = "CUDA GPU", bus[32] = "";
        if (d->cuDeviceGet(&dev, i) == CUDA_SUCCESS) {
            d->cuDeviceGetName(name, sizeof name, dev);
            d->cuDeviceGetPCIBusId(bus, sizeof bus, dev);
        }
        std::string id(bus);
        for (char &c : id)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        out.push_back({name, id});
    }
    return out;
}

std::string cuda_why_unavailable() {
    return cuda::why_unavailable();
}

std::unique_ptr<Backend> make_cuda_backend(int ordinal) {
    if (!cuda::driver())
        fail(ENODEV, "CUDA GPU " + std::to_string(ordinal) + ": " + cuda::why_unavailable());
    return std::make_unique<CudaBackend>(ordinal);
}

} // namespace phxfs::core
