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
#include <thread>
#include <tuple>

using namespace phxtest;
using namespace phxguest;

namespace {

const char *const kNode = "/dev/phxfs1";
const char *const kStub = "/sys/kernel/debug/nvstub/";

int64_t counter(const char *name) {
    std::ifstream in(std::string("/sys/class/phxfs/phxfs1/") + name);
    int64_t v = -1;
    in >> v;
    return v;
}

int map_ioctl(int fd, unsigned long cmd, uint64_t dev, uint64_t len, const void *va) {
    phxfs_ioctl_map r{};
    r.size = sizeof r;
    r.dev_addr = dev;
    r.len = len;
    r.vaddr = reinterpret_cast<uint64_t>(va);
    errno = 0;
    return ::ioctl(fd, cmd, &r) < 0 ? errno : 0;
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

// cudaFree while mapped: the pages leave user space, access faults, UNMAP
// still succeeds.
TEST_F(Nvidia, RevokeWhileMapped) {
    const int64_t revokes = counter("revokes");
    // A process touching freed GPU memory through its mapping gets SIGBUS.
    const pid_t pid = ::fork();
    if (pid == 0) {
        const uint64_t cva = gpu_alloc(1 << 20);
        uint8_t *cm = static_cast<uint8_t *>(
            ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
        if (cm == MAP_FAILED || map_ioctl(fd_, PHXFS_IOCTL_MAP, cva, 1 << 20, cm))
            _exit(3);
        cm[0] = 1;
        gpu_free(cva);
        volatile uint8_t x = cm[0];
        (void)x;
        _exit(4);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) << "status " << status;
    // I/O into revoked memory fails cleanly; UNMAP still succeeds.
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *m = vma(1 << 20);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), 0);
    gpu_free(va);
    EXPECT_EQ(counter("revokes"), revokes + 2);
    const int dfd = ::open(disk_, O_RDONLY | O_DIRECT);
    errno = 0;
    EXPECT_EQ(::pread(dfd, m, 1 << 20, kDisk), -1);
    EXPECT_EQ(errno, EFAULT);
    ::close(dfd);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, 1 << 20, m), 0);
    ::munmap(m, 1 << 20);
}

TEST_F(Nvidia, FreeWhenIdleCallsNothing) {
    const int64_t revokes = counter("revokes");
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *m = vma(1 << 20);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), 0);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, 1 << 20, m), 0);
    gpu_free(va);
    gpu_free(gpu_alloc(1 << 20)); // never mapped
    EXPECT_EQ(counter("revokes"), revokes);
    ::munmap(m, 1 << 20);
}

// cudaFree while O_DIRECT reads run into the memory: they finish or fail
// with EFAULT, nothing hangs, nothing leaks.
TEST_F(Nvidia, RevokeDuringIo) {
    const uint64_t len = 16 << 20;
    for (int round = 0; round < 3; ++round) {
        const uint64_t va = gpu_alloc(len);
        uint8_t *m = vma(len);
        ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, len, m), 0);
        std::atomic<bool> stop{false};
        std::atomic<int> ok{0}, efault{0}, other{0};
        std::vector<std::thread> readers;
        for (int t = 0; t < 2; ++t)
            readers.emplace_back([&] {
                const int dfd = ::open(disk_, O_RDONLY | O_DIRECT);
                while (!stop) {
                    const ssize_t n = ::pread(dfd, m, len, kDisk);
                    if (n == static_cast<ssize_t>(len))
                        ++ok;
                    else if (n < 0 && errno == EFAULT)
                        ++efault;
                    else
                        ++other;
                    if (n < 0)
                        break;
                }
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
        std::printf("revoke round %d: %d reads done, %d failed with EFAULT\n", round, ok.load(),
                    efault.load());
    }
}

// cudaFree while io_uring holds the GPU pages as fixed buffers (6.3+): the
// pins outlive any I/O, so the revoke waits a bounded time and lets go
// instead of hanging the driver's free path.
TEST_F(Nvidia, RevokeWithFixedBuffersDoesNotHang) {
    utsname u{};
    ::uname(&u);
    int major = 0, minor = 0;
    std::sscanf(u.release, "%d.%d", &major, &minor);
    if (major < 6 || (major == 6 && minor < 3))
        GTEST_SKIP() << "fixed buffers over device memory need 6.3+";
    const uint64_t va = gpu_alloc(1 << 20);
    uint8_t *m = vma(1 << 20);
    ASSERT_EQ(map_ioctl(fd_, PHXFS_IOCTL_MAP, va, 1 << 20, m), 0);
    io_uring ring{};
    ASSERT_EQ(io_uring_queue_init(4, &ring, 0), 0);
    iovec iov{m, 1 << 20};
    ASSERT_EQ(io_uring_register_buffers(&ring, &iov, 1), 0);
    const auto t0 = std::chrono::steady_clock::now();
    gpu_free(va); // the revoke gives up after 10 s
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 30.0);
    EXPECT_EQ(io_uring_unregister_buffers(&ring), 0);
    io_uring_queue_exit(&ring);
    EXPECT_EQ(map_ioctl(fd_, PHXFS_IOCTL_UNMAP, va, 1 << 20, m), 0);
    ::munmap(m, 1 << 20);
}

} // namespace
