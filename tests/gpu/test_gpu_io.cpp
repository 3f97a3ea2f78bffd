// Data integrity against real GPU memory (cudaMalloc, the CUDA virtual memory
// API, managed memory): phxfs_read into device memory and phxfs_write out of
// it match the file byte for byte, aligned and unaligned, registered and not.
// Runs on a GPU machine (ctest -L gpu).
#include "gpu_test.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <phxfs/phxfs.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

using namespace phxtest;

namespace {

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call
#define CU_OK(call) ASSERT_EQ((call), CUDA_SUCCESS) << #call

class GpuIo : public GpuTest {
  protected:
    void SetUp() override {
        GpuTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        CUDA_OK(cudaMalloc(&gpu_, kBuf));
        CUDA_OK(cudaMemset(gpu_, 0xAA, kBuf));
        CUDA_OK(cudaDeviceSynchronize()); // the memset may still run (CUDA's rule)
    }
    void TearDown() override {
        if (gpu_)
            cudaFree(gpu_);
        GpuTest::TearDown();
    }
    std::vector<uint8_t> from_gpu(size_t off, size_t n) {
        std::vector<uint8_t> h(n);
        EXPECT_EQ(cudaMemcpy(h.data(), static_cast<char *>(gpu_) + off, n, cudaMemcpyDeviceToHost),
                  cudaSuccess);
        return h;
    }
    static constexpr size_t kBuf = 96 << 20;
    void *gpu_ = nullptr;
};

struct Case {
    uint64_t file_off;
    size_t len, buf_off;
};

const Case kCases[] = {
    {0, 1, 0},          {0, 4096, 0},
    {1, 4095, 3},       {4095, 4097, 0},
    {8192, 1 << 20, 0}, {12345, (1 << 20) + 3, 77},
    {0, 64 << 20, 0},   {4096 * 5 + 1, (64 << 20) + 5, 4096},
};

TEST_F(GpuIo, ReadsIntoDeviceMemory) {
    const std::string path = dir_.file("gpu-read");
    make_pattern_file(path, 80 << 20);
    for (int odirect = 0; odirect < 2; ++odirect) {
        for (int registered = 0; registered < 2; ++registered) {
            const int fd = ::open(path.c_str(), O_RDONLY | (odirect ? O_DIRECT : 0));
            ASSERT_GE(fd, 0);
            void *target = nullptr;
            if (registered) {
                ASSERT_EQ(phxfs_regmem(0, gpu_, kBuf, &target), 0) << phxfs_last_error();
            }
            for (const Case &c : kCases) {
                CUDA_OK(cudaMemset(gpu_, 0xAA, c.buf_off + c.len + 1));
                CUDA_OK(cudaDeviceSynchronize()); // the memset may still run (CUDA's rule)
                ASSERT_EQ(phxfs_read({fd, 0}, gpu_, c.buf_off, c.len, c.file_off),
                          static_cast<ssize_t>(c.len))
                    << phxfs_last_error();
                auto h = from_gpu(c.buf_off, c.len + 1);
                ASSERT_EQ(first_mismatch_fast(h.data(), c.len, c.file_off), c.len)
                    << "off " << c.file_off << " len " << c.len << " odirect " << odirect;
                ASSERT_EQ(h[c.len], 0xAA) << "wrote past the end";
            }
            if (registered) {
                ASSERT_EQ(phxfs_deregmem(0, gpu_, kBuf), 0);
            }
            ::close(fd);
        }
    }
    phxfs_stats st{};
    st.size = sizeof st;
    ASSERT_EQ(phxfs_get_stats(0, &st), 0);
    EXPECT_GT(st.path[PHXFS_PATH_COMPAT].read_bytes, 0u);
}

TEST_F(GpuIo, WritesFromDeviceMemory) {
    const std::string path = dir_.file("gpu-write");
    uint64_t seed = 500;
    for (int odirect = 0; odirect < 2; ++odirect) {
        for (const Case &c : kCases) {
            ++seed;
            std::vector<uint8_t> h(c.len);
            fill_pattern_fast(h.data(), c.len, c.file_off, seed);
            CUDA_OK(cudaMemcpy(static_cast<char *>(gpu_) + c.buf_off, h.data(), c.len,
                               cudaMemcpyHostToDevice));
            const int fd =
                ::open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR | (odirect ? O_DIRECT : 0), 0644);
            ASSERT_GE(fd, 0);
            ASSERT_EQ(phxfs_write({fd, 0}, gpu_, c.buf_off, c.len, c.file_off),
                      static_cast<ssize_t>(c.len))
                << phxfs_last_error();
            ::close(fd);
            const int rfd = ::open(path.c_str(), O_RDONLY);
            std::vector<uint8_t> back(c.len);
            ASSERT_EQ(::pread(rfd, back.data(), c.len, c.file_off), static_cast<ssize_t>(c.len));
            ::close(rfd);
            ASSERT_EQ(first_mismatch_fast(back.data(), c.len, c.file_off, seed), c.len)
                << "off " << c.file_off << " len " << c.len << " odirect " << odirect;
        }
    }
}

TEST_F(GpuIo, RegistrationChecksTheMemory) {
    void *target = nullptr;
    // A range running past the end of the allocation is refused.
    errno = 0;
    EXPECT_EQ(phxfs_regmem(0, static_cast<char *>(gpu_) + 4096, kBuf, &target), -1);
    EXPECT_EQ(errno, EFAULT) << phxfs_last_error();
    ASSERT_EQ(phxfs_regmem(0, gpu_, kBuf, &target), 0);
    EXPECT_NE(target, nullptr);
    EXPECT_EQ(phxfs_deregmem(0, gpu_, kBuf), 0);
}

CUcontext current_context() {
    CUcontext c = nullptr;
    EXPECT_EQ(cuCtxGetCurrent(&c), CUDA_SUCCESS);
    return c;
}

// A context of the caller's own (cuCtxCreate, not GPU 0's primary context),
// current on this thread while it lives; none is current afterwards.
class OwnContext {
  public:
    OwnContext() {
        CUdevice dev = 0;
        EXPECT_EQ(cuDeviceGet(&dev, 0), CUDA_SUCCESS);
#if CUDA_VERSION >= 13000
        EXPECT_EQ(cuCtxCreate(&ctx_, nullptr, 0, dev), CUDA_SUCCESS);
#else
        EXPECT_EQ(cuCtxCreate(&ctx_, 0, dev), CUDA_SUCCESS);
#endif
        EXPECT_EQ(cuCtxSetCurrent(ctx_), CUDA_SUCCESS);
        CUcontext primary = nullptr;
        EXPECT_EQ(cuDevicePrimaryCtxRetain(&primary, dev), CUDA_SUCCESS);
        EXPECT_NE(ctx_, primary) << "cuCtxCreate gave the primary context";
        cuDevicePrimaryCtxRelease(dev);
    }
    ~OwnContext() {
        EXPECT_EQ(cuCtxSetCurrent(nullptr), CUDA_SUCCESS);
        EXPECT_EQ(cuCtxDestroy(ctx_), CUDA_SUCCESS);
    }
    CUcontext get() const {
        return ctx_;
    }

  private:
    CUcontext ctx_ = nullptr;
};

// A caller with a context of its own (cuCtxCreate) gets it back current
// after every call, whatever the library did on the GPU meanwhile: with a
// buffer of the primary context (cudaMalloc) and with one allocated in the
// caller's context, from phxfs_open to phxfs_close.
TEST_F(GpuIo, CallersOwnContextIsLeftAlone) {
    const std::string path = dir_.file("gpu-ctx");
    make_pattern_file(path, 4 << 20);
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    {
        OwnContext mine;
        EXPECT_EQ(phxfs_read({fd, 0}, gpu_, 0, 4 << 20, 0), 4 << 20) << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_read left another context current";
        void *target = nullptr;
        EXPECT_EQ(phxfs_regmem(0, gpu_, 1 << 20, &target), 0) << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_regmem";
        EXPECT_EQ(phxfs_read({fd, 0}, gpu_, 0, 1 << 20, 4096), 1 << 20) << phxfs_last_error();
        EXPECT_EQ(phxfs_deregmem(0, gpu_, 1 << 20), 0);
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_deregmem";

        // The device's last close and a fresh open (its primary context,
        // streams and staging memory freed and made) with the caller's
        // context current.
        ASSERT_EQ(phxfs_close(0), 0) << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_close";
        ASSERT_EQ(phxfs_open(0), 0) << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_open";

        // Memory allocated in the caller's context, not the primary one.
        constexpr size_t kOwn = 2 << 20;
        CUdeviceptr own = 0;
        ASSERT_EQ(cuMemAlloc(&own, kOwn), CUDA_SUCCESS);
        ASSERT_EQ(cuMemsetD8(own, 0xAA, kOwn), CUDA_SUCCESS);
        ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
        void *buf = reinterpret_cast<void *>(own);
        EXPECT_EQ(phxfs_read({fd, 0}, buf, 5, kOwn - 10, 12345), static_cast<ssize_t>(kOwn - 10))
            << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_read (own memory)";
        std::vector<uint8_t> back(kOwn);
        ASSERT_EQ(cuMemcpyDtoH(back.data(), own, kOwn), CUDA_SUCCESS);
        EXPECT_EQ(back[4], 0xAA);
        EXPECT_EQ(first_mismatch_fast(back.data() + 5, kOwn - 10, 12345), kOwn - 10);
        EXPECT_EQ(back[kOwn - 5], 0xAA);
        EXPECT_EQ(phxfs_regmem(0, buf, kOwn, &target), 0) << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_regmem (own memory)";
        ASSERT_EQ(cuMemsetD8(own, 0x5C, kOwn), CUDA_SUCCESS);
        // The memset may still run when it returns (CUDA's rule); a caller
        // orders its own work before the library's copies.
        ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
        EXPECT_EQ(phxfs_write({fd, 0}, buf, 5, kOwn - 10, 12345), static_cast<ssize_t>(kOwn - 10))
            << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_write (own memory)";
        std::vector<uint8_t> file(kOwn - 10);
        ASSERT_EQ(::pread(fd, file.data(), file.size(), 12345), static_cast<ssize_t>(file.size()));
        EXPECT_EQ(std::count(file.begin(), file.end(), 0x5C), static_cast<long>(file.size()));
        EXPECT_EQ(phxfs_deregmem(0, buf, kOwn), 0);
        EXPECT_EQ(current_context(), mine.get()) << "phxfs_deregmem (own memory)";
        EXPECT_EQ(cuMemFree(own), CUDA_SUCCESS);
    }
    ::close(fd);
    const auto first = from_gpu(0, 1 << 20);
    EXPECT_EQ(first_mismatch_fast(first.data(), 1 << 20, 4096, 1), 1u << 20);
}

// A thread that never touched CUDA has no current context: the library
// still checks ranges (it used to skip the check there) and leaves the
// thread without one.
TEST_F(GpuIo, ThreadWithoutContextIsCheckedAndLeftBare) {
    std::thread t([&] {
        ASSERT_EQ(current_context(), nullptr) << "a fresh thread";
        void *target = nullptr;
        errno = 0;
        EXPECT_EQ(phxfs_regmem(0, static_cast<char *>(gpu_) + 4096, kBuf, &target), -1);
        EXPECT_EQ(errno, EFAULT) << phxfs_last_error();
        EXPECT_EQ(phxfs_regmem(0, gpu_, kBuf, &target), 0) << phxfs_last_error();
        EXPECT_EQ(phxfs_deregmem(0, gpu_, kBuf), 0);
        EXPECT_EQ(current_context(), nullptr) << "the library left a context current";
    });
    t.join();
}

// Memory of the CUDA virtual memory API, as PyTorch's expandable segments,
// vLLM's cuMem allocator and JAX make it: one address reservation with
// several physical allocations ("segments") mapped into it, each g bytes.
class VmmBuffer {
  public:
    enum Access { none, read_write };
    // Reserves slots * g bytes; map() fills slots; the rest stays unmapped.
    explicit VmmBuffer(int slots) {
        prop_.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop_.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop_.location.id = 0;
        // Allowed for the direct path (nvidia_p2p) where the GPU can.
        int rdma = 0;
        cuDeviceGetAttribute(&rdma, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, 0);
        prop_.allocFlags.gpuDirectRDMACapable = rdma ? 1 : 0;
        size_t gran = 0;
        EXPECT_EQ(cuMemGetAllocationGranularity(&gran, &prop_, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
                  CUDA_SUCCESS);
        g = (size_t(2 << 20) + gran - 1) / gran * gran;
        size_ = slots * g;
        EXPECT_EQ(cuMemAddressReserve(&base_, size_, 0, 0, 0), CUDA_SUCCESS);
    }
    ~VmmBuffer() {
        for (auto [at, handle] : mapped_) {
            EXPECT_EQ(cuMemUnmap(at, g), CUDA_SUCCESS);
            EXPECT_EQ(cuMemRelease(handle), CUDA_SUCCESS);
        }
        EXPECT_EQ(cuMemAddressFree(base_, size_), CUDA_SUCCESS);
    }
    // Maps a physical allocation of its own at slot i.
    void map(int slot, Access access = read_write) {
        CUmemGenericAllocationHandle h = 0;
        ASSERT_EQ(cuMemCreate(&h, g, &prop_, 0), CUDA_SUCCESS);
        const CUdeviceptr at = base_ + slot * g;
        ASSERT_EQ(cuMemMap(at, g, 0, h, 0), CUDA_SUCCESS);
        mapped_.push_back({at, h});
        if (access == read_write) {
            CUmemAccessDesc d{};
            d.location = prop_.location;
            d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            ASSERT_EQ(cuMemSetAccess(at, g, &d, 1), CUDA_SUCCESS);
        }
    }
    char *at(size_t off) const { return reinterpret_cast<char *>(base_ + off); }
    size_t g = 0;

  private:
    CUmemAllocationProp prop_{};
    CUdeviceptr base_ = 0;
    size_t size_ = 0;
    std::vector<std::pair<CUdeviceptr, CUmemGenericAllocationHandle>> mapped_;
};

std::string hex(const void *p) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx",
                  static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(p)));
    return b;
}

// A buffer over three segments mapped back to back: reads and writes that
// cross the boundaries, in chunks that straddle them, registered and not.
// The library used to refuse any range past the first segment ("range runs
// past the end of its cudaMalloc allocation").
TEST_F(GpuIo, VmmMemoryOfSeveralSegments) {
    small_chunks(4, 64 << 10);
    VmmBuffer vmm(3);
    for (int i = 0; i < 3; ++i)
        vmm.map(i);
    const size_t g = vmm.g, total = 3 * g;
    const std::string path = dir_.file("gpu-vmm");
    make_pattern_file(path, total + (1 << 20));
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> h(total);
    const Case cases[] = {
        {4096, total - 3 * 4096, 4096}, // 4 KiB aligned, across both boundaries
        {777, total - 1000, 3},         // unaligned, nearly all of it
        {65536 - 5, 10, g - 5},         // ten bytes around the first boundary
        {12345, 2 * g, g / 2 + 7},      // into the third segment
    };
    for (int registered = 0; registered < 2; ++registered) {
        void *target = nullptr;
        if (registered) {
            ASSERT_EQ(phxfs_regmem(0, vmm.at(0), total, &target), 0) << phxfs_last_error();
        }
        for (const Case &c : cases) {
            SCOPED_TRACE("buf_off " + std::to_string(c.buf_off) + " len " + std::to_string(c.len) +
                         " registered " + std::to_string(registered));
            CU_OK(cuMemsetD8(reinterpret_cast<CUdeviceptr>(vmm.at(0)), 0xAA, total));
            ASSERT_EQ(phxfs_read({fd, 0}, vmm.at(0), c.buf_off, c.len, c.file_off),
                      static_cast<ssize_t>(c.len))
                << phxfs_last_error();
            CU_OK(cuMemcpyDtoH(h.data(), reinterpret_cast<CUdeviceptr>(vmm.at(0)), total));
            ASSERT_EQ(first_mismatch_fast(h.data() + c.buf_off, c.len, c.file_off), c.len);
            if (c.buf_off) {
                ASSERT_EQ(h[c.buf_off - 1], 0xAA) << "wrote before the start";
            }
            if (c.buf_off + c.len < total) {
                ASSERT_EQ(h[c.buf_off + c.len], 0xAA) << "wrote past the end";
            }

            // And back out: a fresh pattern written from the same range.
            const uint64_t seed = 7 + registered;
            std::vector<uint8_t> src(c.len);
            fill_pattern_fast(src.data(), c.len, c.file_off, seed);
            CU_OK(
                cuMemcpyHtoD(reinterpret_cast<CUdeviceptr>(vmm.at(c.buf_off)), src.data(), c.len));
            ASSERT_EQ(phxfs_write({fd, 0}, vmm.at(0), c.buf_off, c.len, c.file_off),
                      static_cast<ssize_t>(c.len))
                << phxfs_last_error();
            std::vector<uint8_t> back(c.len);
            ASSERT_EQ(::pread(fd, back.data(), c.len, c.file_off), static_cast<ssize_t>(c.len));
            ASSERT_EQ(first_mismatch_fast(back.data(), c.len, c.file_off, seed), c.len);
            make_pattern_file(path, total + (1 << 20)); // the read pattern again
        }
        if (registered) {
            ASSERT_EQ(phxfs_deregmem(0, vmm.at(0), total), 0) << phxfs_last_error();
        }
    }
    ::close(fd);
}

// VMM ranges that are not wholly mapped memory this GPU may use are refused
// with EFAULT and a message naming the address where they stop being so: a
// hole between two segments, a segment mapped without access for the GPU,
// the end of the mapped part of the reservation.
TEST_F(GpuIo, VmmRangeWithHoleIsRefused) {
    // Slots: 0 mapped, 1 hole, 2 mapped, 3 mapped without access, 4 mapped,
    // 5 reserved but unmapped.
    VmmBuffer vmm(6);
    vmm.map(0);
    vmm.map(2);
    vmm.map(3, VmmBuffer::none);
    vmm.map(4);
    const size_t g = vmm.g;
    const std::string path = dir_.file("gpu-vmm-hole");
    make_pattern_file(path, 1 << 20);
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    struct Bad {
        const char *what;
        size_t start, stop; // [start, end) of the buffer; stop: first bad byte
    };
    const Bad bad[] = {
        {"hole", g - 4096, g},
        {"no access", 3 * g - 4096, 3 * g},
        {"past the mapped end", 5 * g - 4096, 5 * g},
    };
    for (const Bad &b : bad) {
        SCOPED_TRACE(b.what);
        errno = 0;
        EXPECT_EQ(phxfs_read({fd, 0}, vmm.at(b.start), 0, 8192, 0), -1);
        EXPECT_EQ(errno, EFAULT);
        EXPECT_NE(std::string(phxfs_last_error()).find(hex(vmm.at(b.stop))), std::string::npos)
            << "the message should name " << hex(vmm.at(b.stop)) << ": " << phxfs_last_error();
        errno = 0;
        EXPECT_EQ(phxfs_write({fd, 0}, vmm.at(b.start), 0, 8192, 0), -1);
        EXPECT_EQ(errno, EFAULT) << phxfs_last_error();
        void *target = nullptr;
        errno = 0;
        EXPECT_EQ(phxfs_regmem(0, vmm.at(b.start), 8192, &target), -1);
        EXPECT_EQ(errno, EFAULT) << phxfs_last_error();
    }
    // The mapped parts alone are fine.
    EXPECT_EQ(phxfs_read({fd, 0}, vmm.at(g - 4096), 0, 4096, 0), 4096) << phxfs_last_error();
    EXPECT_EQ(phxfs_read({fd, 0}, vmm.at(5 * g - 4096), 0, 4096, 0), 4096) << phxfs_last_error();
    ::close(fd);
}

// Managed memory (cuMemAllocManaged) from a context of the caller's own:
// read into and written from, registered and not, bytes checked by the CPU,
// which reaches managed memory directly.
TEST_F(GpuIo, ManagedMemoryFromOwnContext) {
    constexpr size_t kManaged = 6 << 20;
    const std::string path = dir_.file("gpu-managed");
    make_pattern_file(path, kManaged + (1 << 20));
    OwnContext mine;
    CUdeviceptr m = 0;
    ASSERT_EQ(cuMemAllocManaged(&m, kManaged, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    auto *buf = reinterpret_cast<uint8_t *>(m);
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    for (int registered = 0; registered < 2; ++registered) {
        void *target = nullptr;
        if (registered) {
            ASSERT_EQ(phxfs_regmem(0, buf, kManaged, &target), 0) << phxfs_last_error();
        }
        std::memset(buf, 0xAA, kManaged);
        const size_t len = kManaged - 8192 - 3;
        ASSERT_EQ(phxfs_read({fd, 0}, buf, 4096, len, 4096 + 99), static_cast<ssize_t>(len))
            << phxfs_last_error();
        EXPECT_EQ(current_context(), mine.get());
        EXPECT_EQ(buf[4095], 0xAA);
        EXPECT_EQ(first_mismatch_fast(buf + 4096, len, 4096 + 99), len);
        EXPECT_EQ(buf[4096 + len], 0xAA);

        fill_pattern_fast(buf, kManaged, 0, 3 + registered);
        ASSERT_EQ(phxfs_write({fd, 0}, buf, 0, kManaged, 0), static_cast<ssize_t>(kManaged))
            << phxfs_last_error();
        std::vector<uint8_t> back(kManaged);
        ASSERT_EQ(::pread(fd, back.data(), kManaged, 0), static_cast<ssize_t>(kManaged));
        EXPECT_EQ(first_mismatch_fast(back.data(), kManaged, 0, 3 + registered), kManaged);
        make_pattern_file(path, kManaged + (1 << 20));
        if (registered) {
            ASSERT_EQ(phxfs_deregmem(0, buf, kManaged), 0) << phxfs_last_error();
        }
    }
    ::close(fd);
    EXPECT_EQ(cuMemFree(m), CUDA_SUCCESS);
}

} // namespace

// #12: a batch of small reads into device memory goes through grouped
// copies (cuMemcpyBatchAsync where the driver has it): every request's bytes
// land where it asked, none elsewhere; then small writes out of it.
TEST_F(GpuIo, BatchOfSmallRequestsIntoAndOutOfDeviceMemory) {
    const std::string path = dir_.file("gpu-batch");
    make_pattern_file(path, 64 << 20);
    for (int odirect = 0; odirect < 2; ++odirect) {
        const int fd = ::open(path.c_str(), O_RDWR | (odirect ? O_DIRECT : 0));
        ASSERT_GE(fd, 0);
        phxfs_file_t fh = nullptr;
        ASSERT_EQ(phxfs_file_open(&fh, 0, fd), 0) << phxfs_last_error();
        constexpr unsigned kReqs = 2048;
        // Each request has a 32 KiB slot of the file to itself (a direct
        // write must not share a page with another request's buffered one).
        const size_t sizes[] = {512, 4096, 8192 + 100, 30000};
        std::vector<phxfs_io> ios(kReqs);
        std::vector<uint64_t> buf_off(kReqs);
        uint64_t at = 0;
        for (unsigned i = 0; i < kReqs; ++i) {
            const size_t n = sizes[i % 4];
            const uint64_t off = (uint64_t{i} * 7919 % kReqs) * 32768 + (i % 3) * 700;
            buf_off[i] = at;
            ios[i] = {
                fh, PHXFS_OP_READ, 0, gpu_, at, n, off, reinterpret_cast<void *>(uintptr_t{i})};
            at += n + 16; // a gap of 0xAA between requests
        }
        ASSERT_LE(at, kBuf);
        CUDA_OK(cudaMemset(gpu_, 0xAA, at));
        CUDA_OK(cudaDeviceSynchronize()); // the memset may still run (CUDA's rule)
        ASSERT_EQ(phxfs_reset_stats(0), 0);
        phxfs::Batch b(kReqs);
        b.submit(ios.data(), kReqs);
        std::vector<phxfs_completion> cs(kReqs);
        ASSERT_EQ(b.reap(cs.data(), kReqs, kReqs, std::chrono::seconds(60)), kReqs);
        for (const phxfs_completion &c : cs)
            ASSERT_EQ(c.status, PHXFS_IO_DONE) << c.error;
        auto h = from_gpu(0, at);
        for (unsigned i = 0; i < kReqs; ++i) {
            const size_t n = ios[i].nbyte;
            ASSERT_EQ(first_mismatch(h.data() + buf_off[i], n, ios[i].f_offset), n) << i;
            for (unsigned g = 0; g < 16; ++g)
                ASSERT_EQ(h[buf_off[i] + n + g], 0xAA) << "request " << i << " wrote past its end";
        }
        // The same requests as writes, each to where it came from, after the
        // file was zeroed: it must read back as the pattern.
        ASSERT_EQ(::ftruncate(fd, 0), 0);
        ASSERT_EQ(::ftruncate(fd, 64 << 20), 0);
        for (phxfs_io &io : ios)
            io.op = PHXFS_OP_WRITE;
        b.submit(ios.data(), kReqs);
        ASSERT_EQ(b.reap(cs.data(), kReqs, kReqs, std::chrono::seconds(60)), kReqs);
        for (const phxfs_completion &c : cs)
            ASSERT_EQ(c.status, PHXFS_IO_DONE) << c.error;
        const int rfd = ::open(path.c_str(), O_RDONLY);
        std::vector<uint8_t> back(65536);
        for (unsigned i = 0; i < kReqs; ++i) {
            const size_t n = ios[i].nbyte;
            ASSERT_EQ(::pread(rfd, back.data(), n, ios[i].f_offset), static_cast<ssize_t>(n));
            ASSERT_EQ(first_mismatch(back.data(), n, ios[i].f_offset), n) << i;
        }
        ::close(rfd);
        phxfs_stats st{};
        st.size = sizeof st;
        ASSERT_EQ(phxfs_get_stats(0, &st), 0);
        EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_calls, kReqs);
        EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].write_calls, kReqs);
        ASSERT_EQ(phxfs_file_close(fh), 0);
        ::close(fd);
        make_pattern_file(path, 64 << 20);
    }
}

// #12: futures into device memory, many in flight, with the caller's own
// context current on its thread and left so.
TEST_F(GpuIo, FuturesIntoDeviceMemory) {
    const std::string path = dir_.file("gpu-futures");
    make_pattern_file(path, 64 << 20);
    phxfs::Device dev(0);
    phxfs::File f(path, O_RDONLY, dev);
    std::vector<phxfs::Future> fs;
    for (size_t i = 0; i < 64; ++i)
        fs.push_back(
            f.pread(gpu_, 1 << 20, static_cast<off_t>(i << 20), static_cast<off_t>(i << 20)));
    for (auto &fu : fs)
        EXPECT_EQ(fu.get(), 1u << 20);
    auto h = from_gpu(0, 64 << 20);
    EXPECT_EQ(first_mismatch_fast(h.data(), 64 << 20, 0), 64u << 20);
}

// #12: the scatter kernel runs in the library's context and may not touch
// cudaMalloc memory of another context (its kernels would fault): a batch
// into memory of the caller's own context goes through copies, and lands.
TEST_F(GpuIo, BatchIntoMemoryOfTheCallersContext) {
    const std::string path = dir_.file("gpu-batch-ctx");
    make_pattern_file(path, 4 << 20);
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    OwnContext mine;
    constexpr size_t kOwn = 1 << 20;
    CUdeviceptr own = 0;
    ASSERT_EQ(cuMemAlloc(&own, kOwn), CUDA_SUCCESS);
    ASSERT_EQ(cuMemsetD8(own, 0xAA, kOwn), CUDA_SUCCESS);
    ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
    phxfs_file_t fh = nullptr;
    ASSERT_EQ(phxfs_file_open(&fh, 0, fd), 0) << phxfs_last_error();
    constexpr unsigned kReqs = 128;
    std::vector<phxfs_io> ios(kReqs);
    for (unsigned i = 0; i < kReqs; ++i) // 4 KiB pieces with 4 KiB gaps
        ios[i] = {fh,
                  PHXFS_OP_READ,
                  0,
                  reinterpret_cast<void *>(own),
                  i * 8192ull,
                  4096,
                  (i * 7919ull % 1024) * 4096,
                  nullptr};
    phxfs::Batch b(kReqs);
    b.submit(ios.data(), kReqs);
    std::vector<phxfs_completion> cs(kReqs);
    ASSERT_EQ(b.reap(cs.data(), kReqs, kReqs, std::chrono::seconds(30)), kReqs);
    for (const phxfs_completion &c : cs)
        ASSERT_EQ(c.status, PHXFS_IO_DONE) << c.error;
    std::vector<uint8_t> h(kOwn);
    ASSERT_EQ(cuMemcpyDtoH(h.data(), own, kOwn), CUDA_SUCCESS);
    for (unsigned i = 0; i < kReqs; ++i) {
        ASSERT_EQ(first_mismatch(h.data() + i * 8192ull, 4096, ios[i].f_offset), 4096u) << i;
        ASSERT_EQ(h[i * 8192ull + 4096], 0xAA) << i;
    }
    EXPECT_EQ(phxfs_file_close(fh), 0);
    EXPECT_EQ(cuMemFree(own), CUDA_SUCCESS);
    ::close(fd);
}
