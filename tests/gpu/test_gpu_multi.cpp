// Several devices with GPUs (#14). With one GPU: the GPU beside two host
// devices (PHXFS_HOST_DEVICES=2, set before the library starts), busy at
// once; GPU 0 reached from two contexts (its primary one and the caller's
// own) at once; and the cross-device rule for a GPU buffer given a host
// device's id. With two GPUs or more: both GPUs at once, each through its
// own id, and GPU 1's memory with GPU 0's id refused with EXDEV. Tests that
// need a second GPU skip with a message on one. Run on a GPU machine:
// ctest -L gpu (or build/tests/phxfs_gpu_multi_tests).
#include "gpu_test.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <phxfs/phxfs.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

using namespace phxtest;
using namespace std::chrono_literals;

namespace {

const bool host_devices_set = [] {
    ::setenv("PHXFS_HOST_DEVICES", "2", 1);
    return true;
}();

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call
#define CU_OK(call) ASSERT_EQ((call), CUDA_SUCCESS) << #call

constexpr size_t kLen = 32 << 20;

int gpu_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// The ids of the host devices (after the GPUs).
std::vector<int> host_ids() {
    std::vector<int> out;
    for (int id = 0, n = phxfs_device_count(); id < n; ++id) {
        phxfs_device_info info{};
        info.size = sizeof info;
        if (phxfs_device_get_info(id, &info) == 0 && info.kind == PHXFS_DEVICE_HOST)
            out.push_back(id);
    }
    return out;
}

phxfs_path_stats compat_stats(int id) {
    phxfs_stats st{};
    st.size = sizeof st;
    EXPECT_EQ(phxfs_get_stats(id, &st), 0);
    return st.path[PHXFS_PATH_COMPAT];
}

phxfs_path_stats direct_stats(int id) {
    phxfs_stats st{};
    st.size = sizeof st;
    EXPECT_EQ(phxfs_get_stats(id, &st), 0);
    return st.path[PHXFS_PATH_DIRECT];
}

class GpuMulti : public GpuTest {
  protected:
    void SetUp() override {
        ASSERT_TRUE(host_devices_set);
        GpuTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        hosts_ = host_ids();
        ASSERT_EQ(hosts_.size(), 2u) << "PHXFS_HOST_DEVICES=2 gives two host devices";
        ASSERT_GE(hosts_[0], gpu_count()) << "host devices follow the GPUs";
        for (int id : hosts_)
            ASSERT_EQ(phxfs_open(id), 0) << phxfs_last_error();
        path_ = dir_.file("multi");
        make_pattern_file(path_, kLen);
    }
    void TearDown() override {
        for (int id : hosts_)
            phxfs_close(id);
        GpuTest::TearDown();
    }
    std::vector<int> hosts_;
    std::string path_;
};

// GPU 0 and two host devices, each read by a thread of its own, ten times:
// the bytes land right and each device counts its own traffic.
TEST_F(GpuMulti, GpuAndHostDevicesAtOnce) {
    for (int id : {0, hosts_[0], hosts_[1]})
        ASSERT_EQ(phxfs_reset_stats(id), 0);
    void *gpu = nullptr;
    CUDA_OK(cudaMalloc(&gpu, kLen));
    constexpr int kRounds = 10;
    std::atomic<int> bad{0};
    auto reader = [&](int id, void *buf) {
        const int fd = ::open(path_.c_str(), O_RDONLY);
        for (int r = 0; r < kRounds; ++r)
            if (phxfs_read({fd, id}, buf, 0, kLen, 0) != static_cast<ssize_t>(kLen))
                ++bad;
        ::close(fd);
    };
    auto h0 = host_buffer(kLen), h1 = host_buffer(kLen);
    std::thread t0(reader, 0, gpu), t1(reader, hosts_[0], h0.get()),
        t2(reader, hosts_[1], h1.get());
    t0.join();
    t1.join();
    t2.join();
    EXPECT_EQ(bad.load(), 0) << phxfs_last_error();
    std::vector<uint8_t> back(kLen);
    CUDA_OK(cudaMemcpy(back.data(), gpu, kLen, cudaMemcpyDeviceToHost));
    EXPECT_EQ(first_mismatch_fast(back.data(), kLen, 0), kLen);
    EXPECT_EQ(first_mismatch_fast(h0.get(), kLen, 0), kLen);
    EXPECT_EQ(first_mismatch_fast(h1.get(), kLen, 0), kLen);
    const uint64_t gpu_bytes = compat_stats(0).read_bytes + direct_stats(0).read_bytes;
    EXPECT_EQ(gpu_bytes, kRounds * kLen);
    for (int id : hosts_)
        EXPECT_EQ(compat_stats(id).read_bytes, kRounds * kLen) << "device " << id;
    cudaFree(gpu);
}

// One GPU as two contexts: a buffer of GPU 0's primary context (cudaMalloc)
// and one of the caller's own context (cuCtxCreate), each read through
// device 0 by a thread of its own at once.
TEST_F(GpuMulti, TwoContextsOnOneGpuAtOnce) {
    void *primary = nullptr;
    CUDA_OK(cudaMalloc(&primary, kLen));
    CUdevice dev = 0;
    CU_OK(cuDeviceGet(&dev, 0));
    CUcontext own = nullptr;
#if CUDA_VERSION >= 13000
    CU_OK(cuCtxCreate(&own, nullptr, 0, dev));
#else
    CU_OK(cuCtxCreate(&own, 0, dev));
#endif
    CUdeviceptr mine = 0;
    CU_OK(cuMemAlloc(&mine, kLen));
    CU_OK(cuCtxSetCurrent(nullptr));
    std::atomic<int> bad{0};
    auto reader = [&](void *buf, CUcontext ctx) {
        if (ctx)
            cuCtxSetCurrent(ctx);
        const int fd = ::open(path_.c_str(), O_RDONLY);
        for (int r = 0; r < 5; ++r)
            if (phxfs_read({fd, 0}, buf, 0, kLen, 0) != static_cast<ssize_t>(kLen))
                ++bad;
        ::close(fd);
        CUcontext now = nullptr;
        cuCtxGetCurrent(&now);
        if (now != ctx)
            ++bad; // the library left the thread's context changed
    };
    std::thread a(reader, primary, nullptr), b(reader, reinterpret_cast<void *>(mine), own);
    a.join();
    b.join();
    EXPECT_EQ(bad.load(), 0) << phxfs_last_error();
    std::vector<uint8_t> back(kLen);
    CUDA_OK(cudaMemcpy(back.data(), primary, kLen, cudaMemcpyDeviceToHost));
    EXPECT_EQ(first_mismatch_fast(back.data(), kLen, 0), kLen);
    CU_OK(cuCtxSetCurrent(own));
    CU_OK(cuMemcpyDtoH(back.data(), mine, kLen));
    EXPECT_EQ(first_mismatch_fast(back.data(), kLen, 0), kLen);
    CU_OK(cuMemFree(mine));
    CU_OK(cuCtxSetCurrent(nullptr));
    CU_OK(cuCtxDestroy(own));
    cudaFree(primary);
}

// The cross-device rule on one GPU: GPU 0's memory with a host device's id
// is refused with EXDEV (read, write, regmem, and a batch request alone),
// naming the id to use; nothing is routed.
TEST_F(GpuMulti, GpuMemoryWithAHostDeviceIdIsRefused) {
    void *gpu = nullptr;
    CUDA_OK(cudaMalloc(&gpu, 1 << 20));
    const int host = hosts_[0];
    const int fd = ::open(path_.c_str(), O_RDWR);
    errno = 0;
    EXPECT_EQ(phxfs_read({fd, host}, gpu, 0, 4096, 0), -1);
    EXPECT_EQ(errno, EXDEV);
    EXPECT_NE(std::string(phxfs_last_error()).find("memory of GPU 0 (phxfs device id 0)"),
              std::string::npos)
        << phxfs_last_error();
    errno = 0;
    EXPECT_EQ(phxfs_write({fd, host}, gpu, 0, 4096, 0), -1);
    EXPECT_EQ(errno, EXDEV);
    void *target = nullptr;
    errno = 0;
    EXPECT_EQ(phxfs_regmem(host, gpu, 1 << 20, &target), -1);
    EXPECT_EQ(errno, EXDEV);
    // In a batch, the request fails alone.
    phxfs_file_t fh = nullptr;
    ASSERT_EQ(phxfs_file_open(&fh, host, fd), 0);
    auto h = host_buffer(4096);
    int tag[2] = {0, 1};
    const phxfs_io ios[] = {{fh, PHXFS_OP_READ, 0, gpu, 0, 4096, 0, &tag[0]},
                            {fh, PHXFS_OP_READ, 0, h.get(), 0, 4096, 0, &tag[1]}};
    phxfs::Batch b(2);
    b.submit(ios, 2);
    phxfs_completion cs[2];
    ASSERT_EQ(b.reap(cs, 2, 2, 30s), 2u);
    for (const phxfs_completion &c : cs) {
        if (c.user_data == &tag[0]) {
            EXPECT_EQ(c.status, PHXFS_IO_FAILED);
            EXPECT_EQ(c.result, -EXDEV) << c.error;
        } else {
            EXPECT_EQ(c.status, PHXFS_IO_DONE) << c.error;
        }
    }
    EXPECT_EQ(first_mismatch(h.get(), 4096, 0), 4096u);
    EXPECT_EQ(phxfs_file_close(fh), 0);
    ::close(fd);
    cudaFree(gpu);
}

// Two GPUs at once, each through its own id; GPU 1's memory with GPU 0's
// id is refused (EXDEV), with GPU 1's id it lands.
TEST_F(GpuMulti, TwoGpus) {
    if (gpu_count() < 2)
        GTEST_SKIP() << "one GPU: the two-GPU part of #14 needs a machine with two";
    ASSERT_EQ(phxfs_open(1), 0) << phxfs_last_error();
    for (int id : {0, 1})
        ASSERT_EQ(phxfs_reset_stats(id), 0);
    void *g[2] = {};
    for (int d = 0; d < 2; ++d) {
        CUDA_OK(cudaSetDevice(d));
        CUDA_OK(cudaMalloc(&g[d], kLen));
    }
    CUDA_OK(cudaSetDevice(0));

    const int fd = ::open(path_.c_str(), O_RDONLY);
    errno = 0;
    EXPECT_EQ(phxfs_read({fd, 0}, g[1], 0, 4096, 0), -1);
    EXPECT_EQ(errno, EXDEV);
    EXPECT_NE(std::string(phxfs_last_error()).find("phxfs device id 1"), std::string::npos)
        << phxfs_last_error();
    void *target = nullptr;
    errno = 0;
    EXPECT_EQ(phxfs_regmem(0, g[1], kLen, &target), -1);
    EXPECT_EQ(errno, EXDEV);

    std::atomic<int> bad{0};
    auto reader = [&](int d) {
        cudaSetDevice(d);
        for (int r = 0; r < 10; ++r)
            if (phxfs_read({fd, d}, g[d], 0, kLen, 0) != static_cast<ssize_t>(kLen))
                ++bad;
    };
    std::thread t0(reader, 0), t1(reader, 1);
    t0.join();
    t1.join();
    EXPECT_EQ(bad.load(), 0) << phxfs_last_error();
    std::vector<uint8_t> back(kLen);
    for (int d = 0; d < 2; ++d) {
        CUDA_OK(cudaMemcpy(back.data(), g[d], kLen, cudaMemcpyDeviceToHost));
        EXPECT_EQ(first_mismatch_fast(back.data(), kLen, 0), kLen) << "GPU " << d;
        EXPECT_EQ(compat_stats(d).read_bytes + direct_stats(d).read_bytes, 10 * kLen)
            << "device " << d << " counts its own reads only";
        phxfs_device_info info{};
        info.size = sizeof info;
        ASSERT_EQ(phxfs_device_get_info(d, &info), 0);
        std::printf("GPU %d: %s at %s, NUMA node %d\n", d, info.name, info.pci_bus_id,
                    info.numa_node);
    }
    ::close(fd);
    for (void *p : g)
        cudaFree(p);
    EXPECT_EQ(phxfs_close(1), 0);
}

} // namespace
