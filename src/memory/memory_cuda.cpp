// The CUDA backend: buffers are CUDA device memory of one GPU (cudaMalloc,
// the virtual memory API, or managed memory); staging is pinned host memory;
// copies are asynchronous on a stream of the GPU's primary context.
#include "core/error.hpp"
#include "core/spin.hpp"
#include "memory/cuda_driver.hpp"
#include "memory/cuda_scatter.hpp"
#include "memory/memory.hpp"
#include "memory/numa.hpp"

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

namespace phxfs::core {

namespace {

const cuda::Driver &drv() {
    return *cuda::driver();
}

// Whether a is memory of the virtual memory API (cuMemCreate + cuMemMap), as
// PyTorch's expandable segments, vLLM and JAX allocate. Only such memory has
// an allocation handle to retain; cudaMalloc and managed memory have none.
// (cuMemGetAccess cannot tell: on cudaMalloc memory it succeeds without
// reporting any flags, as seen with driver 580 on an H100.)
bool vmm_mapped(CUdeviceptr a) {
    CUmemGenericAllocationHandle h{};
    if (drv().cuMemRetainAllocationHandle(&h, reinterpret_cast<void *>(a)) != CUDA_SUCCESS)
        return false;
    drv().cuMemRelease(h); // drops the reference just taken; the mapping keeps its own
    return true;
}

class CudaStream final : public Stream {
  public:
    CudaStream(CUcontext ctx, const ScatterKernel &scatter, bool spin)
        : ctx_(ctx), scatter_(scatter) {
        cuda::ContextScope scope(ctx_);
        cuda::check(drv().cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
        const cuda::Driver &d = drv();
        if (!spin && d.cuStreamQuery && d.cuEventCreate && d.cuEventDestroy && d.cuEventRecord &&
            d.cuEventSynchronize &&
            d.cuEventCreate(&done_, CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING) !=
                CUDA_SUCCESS)
            done_ = nullptr;
    }
    ~CudaStream() override {
        try {
            cuda::ContextScope scope(ctx_);
            if (done_)
                drv().cuEventDestroy(done_);
            drv().cuStreamDestroy(stream_);
            if (bounce_)
                drv().cuMemFree(bounce_);
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
    void to_buffers(const Copy *copies, size_t n) override { batch(copies, n, true); }
    void to_stagings(const Copy *copies, size_t n) override { batch(copies, n, false); }
    // A wait of up to kPoll is polled for: a lane's 1 MiB load waits a few
    // hundred microseconds behind the other lanes' copies, and waking from
    // a sleep cost a VM tens of microseconds each time (64 KiB reads in
    // batches of 1024 ran 35 % faster on an H100 with every wait polled). A
    // longer one (a lane's 4 MiB behind 15 others: a millisecond or more)
    // then sleeps, through an event with blocking sync, so that its CPU
    // time goes to the other lanes' file reads (sequential reads of a 16 GiB
    // file used 10 cores that way, and 15 spinning, at the same speed).
    void wait() override {
        cuda::ContextScope scope(ctx_);
        const cuda::Driver &d = drv();
        if (!done_) {
            cuda::check(d.cuStreamSynchronize(stream_), "cuStreamSynchronize");
            return;
        }
        const auto until = std::chrono::steady_clock::now() + kPoll;
        for (;;) {
            const CUresult r = d.cuStreamQuery(stream_);
            if (r != CUDA_ERROR_NOT_READY) {
                cuda::check(r, "cuStreamQuery");
                return;
            }
            if (std::chrono::steady_clock::now() >= until)
                break;
            for (int i = 0; i < 16; ++i) // a breath between queries of the driver
                cpu_relax();
        }
        cuda::check(d.cuEventRecord(done_, stream_), "cuEventRecord");
        cuda::check(d.cuEventSynchronize(done_), "cuEventSynchronize");
    }

  private:
    // Device-to-host pieces up to this size go through the scatter kernel
    // (which then writes pinned host memory over PCIe, one block a piece);
    // larger ones through the copy engine, whose cost per copy is small
    // beside theirs.
    static constexpr size_t kScatterMax = 256 << 10;

    // A group's copies in as few operations as the GPU allows, all in stream
    // order. Into the device: the staging span holding the pieces in one
    // copy to a device bounce buffer, then one scatter launch device to
    // device. Out of it: small pieces in one scatter launch straight into
    // pinned memory. What the kernel cannot reach, and everything without
    // it: one cuMemcpyBatchAsync where the driver has it, else a copy each.
    void batch(const Copy *copies, size_t n, bool to_device) {
        cuda::ContextScope scope(ctx_);
        if (n > 1 && scatter_.usable()) {
            kernel_.clear();
            other_.clear();
            reach_lo_ = reach_hi_ = 0; // memory may have been freed and mapped anew since

            for (size_t i = 0; i < n; ++i) {
                const Copy &c = copies[i];
                const bool fits = to_device || c.n <= kScatterMax;
                (fits && kernel_reaches(to_device ? c.dst : c.src) ? kernel_ : other_).push_back(c);
            }
            if (kernel_.size() > 1 && (!to_device || through_bounce())) {
                scatter_.launch(stream_, kernel_.data(), kernel_.size(), descriptors_);
                copies = other_.data();
                n = other_.size();
            }
        }
        if (n > 1 && drv().cuMemcpyBatchAsync) {
            dsts_.resize(n);
            srcs_.resize(n);
            sizes_.resize(n);
            for (size_t i = 0; i < n; ++i) {
                dsts_[i] = reinterpret_cast<CUdeviceptr>(copies[i].dst);
                srcs_[i] = reinterpret_cast<CUdeviceptr>(copies[i].src);
                sizes_[i] = copies[i].n;
            }
            CUmemcpyAttributes attr{};
            attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
            size_t attr_index = 0;
            cuda::check(drv().cuMemcpyBatchAsync(dsts_.data(), srcs_.data(), sizes_.data(), n,
                                                 &attr, &attr_index, 1, stream_),
                        "cuMemcpyBatchAsync");
            return;
        }
        for (size_t i = 0; i < n; ++i) {
            const Copy &c = copies[i];
            cuda::check(to_device ? drv().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(c.dst),
                                                            c.src, c.n, stream_)
                                  : drv().cuMemcpyDtoHAsync(
                                        c.dst, reinterpret_cast<CUdeviceptr>(c.src), c.n, stream_),
                        to_device ? "cuMemcpyHtoDAsync" : "cuMemcpyDtoHAsync");
        }
    }

    // Copies the staging span of kernel_'s pieces to the bounce buffer in
    // one operation and points their sources there; false where the span
    // is too large for one (the pieces then go as they are).
    bool through_bounce() {
        uintptr_t lo = UINTPTR_MAX, hi = 0;
        for (const Copy &c : kernel_) {
            lo = std::min(lo, reinterpret_cast<uintptr_t>(c.src));
            hi = std::max(hi, reinterpret_cast<uintptr_t>(c.src) + c.n);
        }
        if (hi - lo > kMaxBounce || !drv().cuMemAlloc || !drv().cuMemFree)
            return false;
        if (bounce_size_ < hi - lo) {
            if (bounce_)
                drv().cuMemFree(bounce_);
            bounce_ = 0;
            bounce_size_ = 0;
            cuda::check(drv().cuMemAlloc(&bounce_, hi - lo), "cuMemAlloc (bounce buffer)");
            bounce_size_ = hi - lo;
        }
        cuda::check(
            drv().cuMemcpyHtoDAsync(bounce_, reinterpret_cast<const void *>(lo), hi - lo, stream_),
            "cuMemcpyHtoDAsync");
        for (Copy &c : kernel_)
            c.src =
                reinterpret_cast<const void *>(bounce_ + (reinterpret_cast<uintptr_t>(c.src) - lo));
        return true;
    }
    static constexpr size_t kMaxBounce = 64 << 20;
    static constexpr auto kPoll = std::chrono::microseconds(500);

    // Whether a kernel of our context may touch the device memory at p:
    // memory of our context, managed memory, and memory of the virtual
    // memory API (check_range made sure it is mapped for this GPU) are; a
    // cudaMalloc allocation of another context on this GPU is not (copies
    // reach it, kernels would fault). Asked once per allocation and group.
    bool kernel_reaches(const void *p) {
        const auto a = reinterpret_cast<CUdeviceptr>(p);
        if (a >= reach_lo_ && a < reach_hi_)
            return reach_ok_;
        CUcontext owner = nullptr;
        unsigned managed = 0;
        CUdeviceptr start = 0;
        size_t size = 0;
        CUpointer_attribute attrs[] = {
            CU_POINTER_ATTRIBUTE_CONTEXT, CU_POINTER_ATTRIBUTE_IS_MANAGED,
            CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, CU_POINTER_ATTRIBUTE_RANGE_SIZE};
        void *data[] = {&owner, &managed, &start, &size};
        if (drv().cuPointerGetAttributes(4, attrs, data, a) != CUDA_SUCCESS)
            return false;
        reach_lo_ = start;
        reach_hi_ = start + size;
        reach_ok_ = owner == ctx_ || owner == nullptr || managed;
        return reach_ok_;
    }

    CUcontext ctx_;
    CUstream stream_ = nullptr;
    CUevent done_ = nullptr; // wait() sleeps on it; null: wait() is cuStreamSynchronize
    const ScatterKernel &scatter_;
    CUdeviceptr reach_lo_ = 0, reach_hi_ = 0; // the allocation kernel_reaches() asked last
    bool reach_ok_ = false;
    // Kept for the next group (a stream belongs to one lane, used by one
    // thread at a time, which waits before it queues again): the scatter
    // kernel's descriptors and cuMemcpyBatchAsync's arrays.
    ScatterKernel::Descriptors descriptors_;
    std::vector<Copy> kernel_, other_;
    CUdeviceptr bounce_ = 0; // device memory a group's staging span is copied to
    size_t bounce_size_ = 0;
    std::vector<CUdeviceptr> dsts_, srcs_;
    std::vector<size_t> sizes_;
};

class CudaBackend final : public Backend {
  public:
    CudaBackend(int ordinal, int numa_node) : ordinal_(ordinal), numa_node_(numa_node) {
        cuda::check(drv().cuDeviceGet(&dev_, ordinal), "cuDeviceGet");
        cuda::check(drv().cuDevicePrimaryCtxRetain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
        // Peer writes into GPU memory (the SSD's DMA on the direct path)
        // follow the GPU's relaxed memory model: they are ordered before the
        // GPU's later work only within the scope the device reports. Where
        // that does not reach the GPU itself (the owner), each direct read
        // ends with a flush, as NVIDIA's GPUDirect RDMA guide asks; where it
        // does (x86 servers, the H100 machine: OWNER), nothing is needed.
        int ordering = 0, options = 0;
        drv().cuDeviceGetAttribute(&ordering, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING,
                                   dev_);
        drv().cuDeviceGetAttribute(&options,
                                   CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS, dev_);
        flush_ = ordering < CU_GPU_DIRECT_RDMA_WRITES_ORDERING_OWNER &&
                 (options & CU_FLUSH_GPU_DIRECT_RDMA_WRITES_OPTION_HOST);
        // PHXFS_SPIN_WAIT=1: lanes wait for their copies spinning, as
        // cuStreamSynchronize does (CudaStream::wait; for comparisons).
        const char *spin = std::getenv("PHXFS_SPIN_WAIT");
        spin_wait_ = spin && *spin && std::string_view(spin) != "0";
    }
    ~CudaBackend() override {
        scatter_.reset(); // its module lives in the context
        drv().cuDevicePrimaryCtxRelease(dev_);
    }

    // Pinned memory from the GPU's NUMA node where the machine has several:
    // cuMemHostAlloc allocates and pins the pages in the call, under the
    // calling thread's memory policy.
    StagingBuffer alloc_staging(size_t n) override {
        cuda::ContextScope scope(ctx_);
        PreferredNode near(numa_node_);
        void *p = nullptr;
        cuda::check(drv().cuMemHostAlloc(&p, n, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc");
        return StagingBuffer(p, StagingFree{ctx_});
    }
    std::unique_ptr<Stream> make_stream() override {
        return std::make_unique<CudaStream>(ctx_, scatter(), spin_wait_);
    }
    void after_direct_read() override {
        if (!flush_)
            return;
        cuda::ContextScope scope(ctx_);
        cuda::check(
            drv().cuFlushGPUDirectRDMAWrites(CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TARGET_CURRENT_CTX,
                                             CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TO_OWNER),
            "cuFlushGPUDirectRDMAWrites");
    }
    // The range must be memory this GPU may copy to and from. cudaMalloc and
    // managed memory are one allocation each, which must hold the whole range.
    // Memory of the virtual memory API is one reservation with physical
    // allocations ("segments") mapped into it, which cuMemGetAddressRange
    // reports one at a time: a buffer may span several mapped back to back,
    // each of which must be this GPU's memory, with read-write access for it.
    MemInfo check_range(const void *p, size_t n) const override {
        if (!p)
            fail(EFAULT, "NULL buffer");
        if (auto mi = check_one_range(p, n))
            return *mi;
        const MemInfo mi = classify(p);
        if (mi.kind != MemKind::cuda)
            return mi; // host memory is always usable
        // Managed memory may be copied to and from in any GPU's context;
        // another GPU's memory is refused (EXDEV), never routed to it.
        check_owner(mi, ordinal_);
        // The lookups need a context, which the caller's thread may lack.
        cuda::ContextScope scope(ctx_);
        const auto a = reinterpret_cast<CUdeviceptr>(p);
        const CUdeviceptr end = a + n;
        auto range = [&] { return "range " + hex(a) + "+" + std::to_string(n); };
        for (CUdeviceptr at = a;;) {
            CUdeviceptr base = 0;
            size_t size = 0;
            if (drv().cuMemGetAddressRange(&base, &size, at) != CUDA_SUCCESS)
                fail(EFAULT, range() + ": no GPU memory is mapped at " + hex(at) +
                                 " (a hole between mapped segments, or past the last one)");
            const bool vmm = vmm_mapped(at);
            // Only segments of the virtual memory API continue one another;
            // a range running on into a cudaMalloc allocation that happens
            // to follow is the caller's mistake, not a buffer.
            if (at != a && !vmm)
                fail(EFAULT, range() +
                                 " runs out of its mapped segments into another allocation at " +
                                 hex(at));
            if (vmm)
                check_access(range(), at);
            if (at != a) {
                const MemInfo next = classify(reinterpret_cast<const void *>(at));
                if (next.kind != MemKind::cuda || next.cuda_ordinal != ordinal_)
                    fail(EFAULT, range() + ": the segment mapped at " + hex(at) +
                                     " is not memory of GPU " + std::to_string(ordinal_));
            }
            if (end <= base + size)
                return mi;
            if (!vmm)
                fail(EFAULT, range() + " runs past the end of its " +
                                 (mi.managed ? "managed" : "cudaMalloc") + " allocation " +
                                 hex(base) + "+" + std::to_string(size));
            at = base + size;
        }
    }

  private:
    // The common cases in one driver call, as every request pays for it:
    // pinned host memory, or a range inside one cudaMalloc or managed
    // allocation that this GPU may read and write. nullopt sends the caller
    // to the walk above (virtual-memory-API and pool memory, pageable host
    // memory, errors), which also words the errors. (The range attributes
    // of virtual-memory-API memory span its whole reservation, holes
    // included, so they prove nothing there.)
    std::optional<MemInfo> check_one_range(const void *p, size_t n) const {
        CUmemorytype type{};
        int ordinal = -1;
        unsigned managed = 0;
        CUdeviceptr start = 0;
        size_t size = 0;
        unsigned long long access = 0;
        unsigned legacy = 0; // cudaMalloc memory, as opposed to the virtual memory API's
        CUpointer_attribute attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                       CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                       CU_POINTER_ATTRIBUTE_IS_MANAGED,
                                       CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                       CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                                       CU_POINTER_ATTRIBUTE_ACCESS_FLAGS,
                                       CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE};
        void *data[] = {&type, &ordinal, &managed, &start, &size, &access, &legacy};
        const auto a = reinterpret_cast<CUdeviceptr>(p);
        // Access flags are those of the current context's device: ours.
        cuda::ContextScope scope(ctx_);
        if (drv().cuPointerGetAttributes(7, attrs, data, a) != CUDA_SUCCESS)
            return std::nullopt;
        if (type == CU_MEMORYTYPE_HOST && !managed)
            return MemInfo{}; // pinned host memory
        if (type != CU_MEMORYTYPE_DEVICE && !managed)
            return std::nullopt;
        if ((!legacy && !managed) || a < start || a + n > start + size)
            return std::nullopt;
        if (managed)
            return MemInfo{MemKind::cuda, ordinal, true};
        if (ordinal != ordinal_ || access != CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE)
            return std::nullopt;
        return MemInfo{MemKind::cuda, ordinal, false};
    }

    // Without read-write access for this GPU (cuMemSetAccess), its copies
    // into the segment would fault, and a fault spoils the whole context.
    void check_access(const std::string &range, CUdeviceptr at) const {
        CUmemLocation loc{};
        loc.type = CU_MEM_LOCATION_TYPE_DEVICE;
        loc.id = ordinal_;
        unsigned long long flags = 0;
        const CUresult r = drv().cuMemGetAccess(&flags, &loc, at);
        if (r != CUDA_SUCCESS || flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            fail(EFAULT, range + ": GPU " + std::to_string(ordinal_) +
                             " has no read-write access to the segment mapped at " + hex(at) +
                             " (cuMemSetAccess)");
    }

    // The scatter kernel, loaded with the first stream.
    const ScatterKernel &scatter() {
        std::call_once(scatter_once_, [this] { scatter_ = std::make_unique<ScatterKernel>(ctx_); });
        return *scatter_;
    }

    int ordinal_;
    int numa_node_; // staging memory's node, -1: anywhere
    CUdevice dev_ = 0;
    CUcontext ctx_ = nullptr;
    bool flush_ = false;     // direct reads end with cuFlushGPUDirectRDMAWrites
    bool spin_wait_ = false; // PHXFS_SPIN_WAIT: lanes spin in wait() instead of sleeping
    std::once_flag scatter_once_;
    std::unique_ptr<ScatterKernel> scatter_;
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
        return {MemKind::cuda, ordinal, managed != 0};
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

std::unique_ptr<Backend> make_cuda_backend(int ordinal, int numa_node) {
    if (!cuda::driver())
        fail(ENODEV, "CUDA GPU " + std::to_string(ordinal) + ": " + cuda::why_unavailable());
    return std::make_unique<CudaBackend>(ordinal, numa_node);
}

} // namespace phxfs::core
