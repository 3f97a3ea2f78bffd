// libphxfs on a "CUDA GPU" in the VM: the fake CUDA driver
// (tests/vm/fakecuda) presents the nvidia_p2p stand-in's BAR as GPU 0, so
// the library's own GPU code runs: it finds the phxfs.ko node serving that
// PCI address (the nvidia provider's /dev/phxfs1), registers cudaMalloc-like
// pointers at any offset (rounding to 64 KiB GPU pages itself), and reads
// and writes by DMA, bouncing only unaligned edges. The host checks the
// bytes in the stand-in's BAR, page by page.
#include "guest.hpp"

#include <dlfcn.h>

using namespace phxtest;
using namespace phxguest;

namespace {

constexpr uint64_t kDisk = 900ull << 20; // this file's part of the raw disk

class CudaPath : public ::testing::Test {
  protected:
    void SetUp() override {
        disk_ = raw_disk();
        if (!disk_ || !std::getenv("PHXFS_FAKE_CUDA_BDF"))
            GTEST_SKIP() << "needs the fake CUDA driver and the raw disk";
        ASSERT_EQ(phxfs_open(0), 0) << phxfs_last_error();
        phxfs_device_info info{};
        info.size = sizeof info;
        ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
        ASSERT_EQ(info.kind, PHXFS_DEVICE_CUDA)
            << info.name << ": the fake CUDA driver did not load (it must export every call of "
            << "src/memory/cuda_driver.hpp; phxfs-check says which is missing)";
        ASSERT_EQ(info.direct, 1) << info.why_not_direct;
        ASSERT_EQ(info.kmod_index, 1) << "the nvidia provider's node";
        ASSERT_EQ(phxfs_reset_stats(0), 0);
    }
    void TearDown() override {
        if (disk_ && std::getenv("PHXFS_FAKE_CUDA_BDF")) {
            EXPECT_EQ(phxfs_close(0), 0);
        }
    }
    phxfs_stats stats() {
        phxfs_stats st{};
        st.size = sizeof st;
        EXPECT_EQ(phxfs_get_stats(0, &st), 0);
        return st;
    }
    const char *disk_ = nullptr;
};

TEST_F(CudaPath, GpuIsServedByTheNvidiaNode) {
    phxfs_device_info info{};
    info.size = sizeof info;
    ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
    EXPECT_STREQ(info.name, "phxfs VM stand-in GPU");
    EXPECT_EQ(phxfs_device_count(), 2) << "the GPU, then the pcibar device";
}

// A registration that starts and ends inside GPU pages: the library maps
// whole 64 KiB pages and keeps the user's offsets exact.
TEST_F(CudaPath, ReadIntoGpuMemoryAtAnyOffset) {
    const uint64_t va = gpu_alloc(8 << 20);
    const uint64_t start = va + 3 * kGpuPage + 4096 * 5; // inside a GPU page
    const uint64_t len = (4 << 20) + 12345;
    void *target = nullptr;
    ASSERT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(start), len, &target), 0)
        << phxfs_last_error();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(target) % 4096, start % 4096);
    disk_pattern(kDisk, 8 << 20, 80);
    const int fd = ::open(disk_, O_RDONLY);
    // File offset and buffer agree mod 4 KiB: the middle goes by DMA.
    const uint64_t file_off = kDisk + 4096 * 5 + 700;
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(start), 700, len - 700, file_off),
              static_cast<ssize_t>(len - 700))
        << phxfs_last_error();
    ::close(fd);
    const phxfs_stats st = stats();
    EXPECT_GT(st.path[PHXFS_PATH_DIRECT].read_bytes, 4u << 20);
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes + st.path[PHXFS_PATH_COMPAT].read_bytes,
              len - 700)
        << "the unaligned edges went through the (fake) GPU copy engine";
    hostcheck_gpu(start + 700, len - 700, file_off);
    EXPECT_EQ(phxfs_deregmem(0, reinterpret_cast<void *>(start), len), 0);
}

// GPU memory to the disk: the SSD reads the GPU pages.
TEST_F(CudaPath, WriteFromGpuMemory) {
    const uint64_t len = 2 << 20;
    const uint64_t va = gpu_alloc(len);
    void *target = nullptr;
    ASSERT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(va), len, &target), 0) << phxfs_last_error();
    fill_pattern_fast(target, len, kDisk + (16 << 20), 81); // CPU writes GPU memory
    const int fd = ::open(disk_, O_RDWR | O_DIRECT);
    ASSERT_EQ(phxfs_write({fd, 0}, reinterpret_cast<void *>(va), 0, len, kDisk + (16 << 20)),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    ::close(fd);
    EXPECT_EQ(stats().path[PHXFS_PATH_DIRECT].write_bytes, len);
    hostcheck_gpu(va, len, kDisk + (16 << 20));
    EXPECT_EQ(phxfs_deregmem(0, reinterpret_cast<void *>(va), len), 0);
}

// Where the platform does not order peer writes into GPU memory, a direct
// read ends with cuFlushGPUDirectRDMAWrites before it returns; where it
// does (OWNER, as on x86 servers), no flush is made.
TEST_F(CudaPath, DirectReadsFlushWhereWritesAreUnordered) {
    void *cuda = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    ASSERT_TRUE(cuda);
    auto flushes = reinterpret_cast<unsigned long (*)()>(::dlsym(cuda, "fake_cuda_flushes"));
    ASSERT_TRUE(flushes);
    const uint64_t len = 1 << 20;
    const uint64_t va = gpu_alloc(len);
    disk_pattern(kDisk + (28 << 20), len, 83);
    const int fd = ::open(disk_, O_RDONLY);
    for (const char *ordering : {"0", "100"}) {
        ::setenv("PHXFS_FAKE_CUDA_RDMA_ORDERING", ordering, 1);
        ASSERT_EQ(phxfs_close(0), 0); // the backend reads the attribute when opened
        ASSERT_EQ(phxfs_open(0), 0);
        void *target = nullptr;
        ASSERT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(va), len, &target), 0)
            << phxfs_last_error();
        const unsigned long before = flushes();
        ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(va), 0, len, kDisk + (28 << 20)),
                  static_cast<ssize_t>(len))
            << phxfs_last_error();
        EXPECT_EQ(flushes() - before, ordering[0] == '0' ? 1u : 0u) << "ordering " << ordering;
        EXPECT_EQ(phxfs_deregmem(0, reinterpret_cast<void *>(va), len), 0);
    }
    ::unsetenv("PHXFS_FAKE_CUDA_RDMA_ORDERING");
    ::close(fd);
    hostcheck_gpu(va, len, kDisk + (28 << 20));
}

// Not registered: the same GPU memory moves through the compat engine.
TEST_F(CudaPath, UnregisteredGpuMemoryGoesThroughCompat) {
    const uint64_t len = 1 << 20;
    const uint64_t va = gpu_alloc(len);
    disk_pattern(kDisk + (24 << 20), len, 82);
    const int fd = ::open(disk_, O_RDONLY);
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(va), 0, len, kDisk + (24 << 20)),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    ::close(fd);
    EXPECT_EQ(stats().path[PHXFS_PATH_COMPAT].read_bytes, len);
    EXPECT_EQ(stats().path[PHXFS_PATH_DIRECT].read_bytes, 0u);
    hostcheck_gpu(va, len, kDisk + (24 << 20));
}

} // namespace
