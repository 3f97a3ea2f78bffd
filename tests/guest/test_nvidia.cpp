// phxfs.ko's nvidia provider, in the VM, against the nvidia_p2p stand-in
// (tests/vm/nvstub): "GPU memory" at made-up GPU virtual addresses, 64 KiB
// pages scattered over a second ivshmem BAR, freed on demand like cudaFree.
// The host checks the bytes: each GPU page's BAR offset comes from the
// stand-in's page list, printed as HOSTCHECK gpubar lines.
#include "guest.hpp"

#include <phxfs/phxfs_ioctl.h>

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <liburing.h>
#include <sys/utsname.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <tuple>

using namespace phxtest;
using namespace phxguest;

namespace {

const char *const kNode = "/dev/phxfs1";
const char *const kStub = "/sys/kernel/debug/nvstub/";

int64_t counter(const char *name) {
    return phx_counter(1, name);
}

class Nvidia : public ::testing::Test {
  protected:
    void SetUp() override {
        disk_ = raw_disk();
        if (!disk_ || ::access(kStub, F_OK) != 0)
            GTEST_SKIP() << "no stand-in or no disk";
        fd_ = ::open(kNode, O_RDWR);
        ASSERT_GE(fd_, 0) << strerror(errno);
    }
    void TearDown() override {
        if (fd_ >= 0)
            ::close(fd_);
        EXPECT_EQ(counter("mapped_bytes"), 0);
        EXPECT_EQ(counter("pages_busy"), 0);
        EXPECT_EQ(wait_counter(1, "draining", 0), 0);
    }
    uint8_t *vma(size_t len) {
        void *va = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        EXPECT_NE(va, MAP_FAILED);
        return static_cast<uint8_t *>(va);
    }
    const char *disk_ = nullptr;
    int fd_ = -1;
};

// Disk offsets of this file's tests (away from the other guest tests).
constexpr uint64_t kDisk = 700ull << 20;

TEST_F(Nvidia, InfoNamesTheProvider) {
    phxfs_ioctl_info info{};
    info.size = sizeof info;
    ASSERT_EQ(::ioctl(fd_, PHXFS_IOCTL_INFO, &info), 0);
    EXPECT_EQ(info.provider, PHXFS_PROVIDER_NVIDIA);
    EXPECT_STREQ(info.name, "nvidia");
    EXPECT_EQ(info.page_size, kGpuPage);
}

TEST_F(Nvidia, RangesMustBeWholeGpuPagesOfGpuMemory) {
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *m = vma(1 << 20);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va + 4096, kGpuPage, m), EINVAL);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 4096, m), EINVAL);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va + (1 << 20), kGpuPage, m), EINVAL)
        << "not allocated";
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 2 << 20, m), EINVAL) << "beyond the VMA";
    ::munmap(m, 1 << 20);
    gpu_free(va);
}

// NVMe DMA into scattered GPU pages, at offsets inside 64 KiB pages too,
// and back out. Each step has its own GPU memory: the host checks the final
// contents.
TEST_F(Nvidia, DiskToGpuAndBack) {
    const uint64_t len = 4 << 20;
    const int fd = ::open(disk_, O_RDWR | O_DIRECT);
    ASSERT_GE(fd, 0);
    std::vector<std::pair<uint64_t, uint8_t *>> bufs;
    for (int i = 0; i < 3; ++i) {
        bufs.emplace_back(gpu_alloc(len), vma(len));
        ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, bufs[i].first, len, bufs[i].second), 0);
    }
    // The whole range.
    auto [va, m] = bufs[0];
    disk_pattern(kDisk, len, 70);
    ASSERT_EQ(::pread(fd, m, len, kDisk), static_cast<ssize_t>(len));
    EXPECT_EQ(first_mismatch(m, len, kDisk, 70), len) << "CPU view of GPU memory";
    hostcheck_gpu(va, len, kDisk);
    // 12 KiB starting 20 KiB into a GPU page.
    std::tie(va, m) = bufs[1];
    const uint64_t in = 5 * kGpuPage + 20480;
    disk_pattern(kDisk + len, 1 << 20, 71);
    ASSERT_EQ(::pread(fd, m + in, 12288, kDisk + len), 12288);
    EXPECT_EQ(first_mismatch(m + in, 12288, kDisk + len, 71), 12288u);
    hostcheck_gpu(va + in, 12288, kDisk + len);
    // GPU memory to disk: the controller reads the scattered pages.
    std::tie(va, m) = bufs[2];
    fill_pattern_fast(m, len, kDisk + (8 << 20), 72);
    ASSERT_EQ(::pwrite(fd, m, len, kDisk + (8 << 20)), static_cast<ssize_t>(len));
    hostcheck_gpu(va, len, kDisk + (8 << 20));
    ::close(fd);
    for (auto [v, p] : bufs) {
        EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, v, len, p), 0);
        ::munmap(p, len);
    }
    // Not freed: freeing GPU memory would let later tests reuse its pages
    // before the host looks at them.
}

TEST_F(Nvidia, ManyGpuPagesInOneRead) {
    const uint64_t len = 64 << 20; // 1024 GPU pages
    const uint64_t va = gpu_alloc(len);
    uint8_t *m = vma(len);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, len, m), 0);
    disk_pattern(kDisk + (16 << 20), len, 73);
    const int fd = ::open(disk_, O_RDONLY | O_DIRECT);
    ASSERT_EQ(::pread(fd, m, len, kDisk + (16 << 20)), static_cast<ssize_t>(len));
    ::close(fd);
    EXPECT_EQ(first_mismatch_fast(m, len, kDisk + (16 << 20), 73), len);
    hostcheck_gpu(va, len, kDisk + (16 << 20));
    ::munmap(m, len); // no UNMAP: munmap releases the pin
}

// cudaFree while mapped: persistent pins keep the memory, so the mapping
// works on until UNMAP, and the GPU pages go to no other allocation before.
TEST_F(Nvidia, FreeWhileMappedKeepsTheMemoryUntilUnmap) {
    const int64_t held0 = gpu_held();
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *m = vma(1 << 20);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), 0);
    std::memset(m, 0x3c, 1 << 20);
    std::map<uint64_t, uint64_t> before = gpu_pages();
    gpu_free(va);
    EXPECT_EQ(gpu_held(), held0 + 16) << "the freed memory is still pinned";
    EXPECT_EQ(m[0], 0x3c);
    EXPECT_EQ(m[(1 << 20) - 1], 0x3c);
    std::set<uint64_t> old_pages;
    for (auto [v, off] : before) {
        if (v >= va && v < va + (1 << 20))
            old_pages.insert(off);
    }
    const uint64_t next = gpu_alloc(1 << 20);
    for (auto [v, off] : gpu_pages()) {
        if (v >= next && v < next + (1 << 20)) {
            EXPECT_EQ(old_pages.count(off), 0u) << "a pinned GPU page was handed out again";
        }
    }
    // DMA into freed-but-pinned memory is harmless: it is nobody else's.
    const int dfd = ::open(disk_, O_RDONLY | O_DIRECT);
    EXPECT_EQ(::pread(dfd, m, 1 << 20, kDisk), 1 << 20);
    ::close(dfd);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, 1 << 20, m), 0);
    EXPECT_EQ(gpu_held(), held0) << "UNMAP of idle pages unpins at once";
    EXPECT_EQ(counter("pinned_bytes"), 0);
    ::munmap(m, 1 << 20);
    gpu_free(next);
}

// munmap (and exit) hand the pins to the drain work, which unpins them.
TEST_F(Nvidia, MunmapUnpinsInTheBackground) {
    const int64_t held0 = gpu_held();
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *m = vma(1 << 20);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), 0);
    gpu_free(va);
    ::munmap(m, 1 << 20);
    EXPECT_EQ(counter("mapped_bytes"), 0);
    EXPECT_EQ(wait_counter(1, "pinned_bytes", 0), 0);
    EXPECT_EQ(gpu_held(), held0);
}

// One buffer mapped twice (two registrations sharing GPU pages): UNMAP of
// one waits for nothing, and the other keeps working.
TEST_F(Nvidia, TwoMapsOfOneRangeWaitForNothing) {
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *a = vma(1 << 20), *b = vma(1 << 20);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, a), 0);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, b), 0);
    std::memset(a, 0x61, 1 << 20);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, 1 << 20, a), 0);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 1.0) << "UNMAP waited for the other mapping's page references";
    EXPECT_EQ(b[12345], 0x61);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, 1 << 20, b), 0);
    EXPECT_EQ(wait_counter(1, "draining", 0), 0);
    EXPECT_EQ(wait_counter(1, "pinned_bytes", 0), 0);
    ::munmap(a, 1 << 20);
    ::munmap(b, 1 << 20);
    gpu_free(va);
}

// cudaFree while O_DIRECT reads run into the memory: every read completes,
// nothing hangs, nothing leaks.
TEST_F(Nvidia, FreeDuringIo) {
    const uint64_t len = 16 << 20;
    const int64_t held0 = gpu_held();
    for (int round = 0; round < 3; ++round) {
        const uint64_t va = gpu_alloc(len);
        uint8_t *m = vma(len);
        ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, len, m), 0);
        std::atomic<bool> stop{false};
        std::atomic<int> ok{0}, other{0};
        std::vector<std::thread> readers;
        for (int t = 0; t < 2; ++t)
            readers.emplace_back([&] {
                const int dfd = ::open(disk_, O_RDONLY | O_DIRECT);
                while (!stop)
                    ++(::pread(dfd, m, len, kDisk) == static_cast<ssize_t>(len) ? ok : other);
                ::close(dfd);
            });
        ::usleep(30000 + round * 40000);
        gpu_free(va);
        ::usleep(20000);
        stop = true;
        for (auto &t : readers)
            t.join();
        EXPECT_EQ(other, 0);
        EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, len, m), 0);
        ::munmap(m, len);
        std::printf("free round %d: %d reads done\n", round, ok.load());
    }
    EXPECT_EQ(gpu_held(), held0);
}

// A driver that refuses persistent pins (MIG, vGPU): MAP says so and
// nothing is left behind.
TEST_F(Nvidia, RefusedPersistentPinsFailClearly) {
    const char *param = "/sys/module/nvstub/parameters/persistent";
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *m = vma(1 << 20);
    std::ofstream(param) << 0;
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), EOPNOTSUPP);
    std::ofstream(param) << 1;
    // An injected failure of the driver (out of BAR1 space, say).
    std::ofstream("/sys/kernel/debug/nvstub/fail") << 1;
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), ENOMEM);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), 0) << "one failure only";
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, 1 << 20, m), 0);
    EXPECT_EQ(counter("pinned_bytes"), 0);
    ::munmap(m, 1 << 20);
    gpu_free(va);
}

} // namespace
