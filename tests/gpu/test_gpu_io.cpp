// Data integrity against real GPU memory (cudaMalloc): phxfs_read into device
// memory and phxfs_write out of it match the file byte for byte, aligned and
// unaligned, registered and not. Runs on a GPU machine (ctest -L gpu).
#include "../unit/testutil.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <thread>

using namespace phxtest;

namespace {

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

class GpuIo : public DeviceTest {
  protected:
    void SetUp() override {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0)
            GTEST_SKIP() << "no GPU";
        DeviceTest::SetUp();
        phxfs_device_info info{};
        info.size = sizeof info;
        ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
        ASSERT_EQ(info.kind, PHXFS_DEVICE_CUDA) << "device 0 must be the GPU";
        CUDA_OK(cudaMalloc(&gpu_, kBuf));
        CUDA_OK(cudaMemset(gpu_, 0xAA, kBuf));
    }
    void TearDown() override {
        if (gpu_) {
            cudaFree(gpu_);
            DeviceTest::TearDown();
        }
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

// A caller with a context of its own (cuCtxCreate) gets it back current
// after every call, whatever the library did on the GPU meanwhile.
TEST_F(GpuIo, CallersOwnContextIsLeftAlone) {
    const std::string path = dir_.file("gpu-ctx");
    make_pattern_file(path, 4 << 20);
    CUdevice dev = 0;
    ASSERT_EQ(cuDeviceGet(&dev, 0), CUDA_SUCCESS);
    CUcontext mine = nullptr;
#if CUDA_VERSION >= 13000
    ASSERT_EQ(cuCtxCreate(&mine, nullptr, 0, dev), CUDA_SUCCESS);
#else
    ASSERT_EQ(cuCtxCreate(&mine, 0, dev), CUDA_SUCCESS);
#endif
    ASSERT_EQ(cuCtxSetCurrent(mine), CUDA_SUCCESS);
    const int fd = ::open(path.c_str(), O_RDONLY);
    EXPECT_EQ(phxfs_read({fd, 0}, gpu_, 0, 4 << 20, 0), 4 << 20) << phxfs_last_error();
    EXPECT_EQ(current_context(), mine) << "phxfs_read left another context current";
    void *target = nullptr;
    EXPECT_EQ(phxfs_regmem(0, gpu_, 1 << 20, &target), 0) << phxfs_last_error();
    EXPECT_EQ(current_context(), mine) << "phxfs_regmem";
    EXPECT_EQ(phxfs_read({fd, 0}, gpu_, 0, 1 << 20, 4096), 1 << 20) << phxfs_last_error();
    EXPECT_EQ(phxfs_deregmem(0, gpu_, 1 << 20), 0);
    EXPECT_EQ(current_context(), mine) << "phxfs_deregmem";
    ::close(fd);
    ASSERT_EQ(cuCtxSetCurrent(nullptr), CUDA_SUCCESS);
    EXPECT_EQ(cuCtxDestroy(mine), CUDA_SUCCESS);
    const auto back = from_gpu(0, 1 << 20);
    EXPECT_EQ(first_mismatch_fast(back.data(), 1 << 20, 4096, 1), 1u << 20);
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

} // namespace
