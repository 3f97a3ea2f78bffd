// phxfs.ko's ioctl ABI and lifetimes, inside the VM: every bad argument,
// munmap / close / exit / fork at bad moments, two processes, and the
// module's counters coming back to zero. These drive the ABI of
// include/phxfs/phxfs_ioctl.h directly: the library never sends most of
// these requests, and the module must survive them all the same.
//
// The BAR range used here starts at PHXFS_KMOD_BAR_OFF (the harness keeps it
// apart from the direct-path tests' ranges).
#include "map_request.hpp"

#include <phxfs/phxfs_ioctl.h>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr uint64_t kPage = 4096;
const char *const kNode = "/dev/phxfs0";

uint64_t bar_base() {
    const char *v = std::getenv("PHXFS_KMOD_BAR_OFF");
    return v && *v ? std::strtoull(v, nullptr, 0) : 448ull << 20;
}

int64_t counter(const char *name) {
    std::ifstream in(std::string("/sys/class/phxfs/phxfs0/") + name);
    int64_t v = -1;
    in >> v;
    return v;
}

phxfs_ioctl_map req(uint64_t dev_addr, uint64_t len, const void *vaddr) {
    return map_request(dev_addr, len, vaddr);
}

// errno of an ioctl that must fail, 0 if it succeeded.
int ioctl_err(int fd, unsigned long cmd, void *arg) {
    errno = 0;
    return ::ioctl(fd, cmd, arg) < 0 ? errno : 0;
}

int do_map(int fd, uint64_t dev_addr, uint64_t len, const void *va) {
    auto r = req(dev_addr, len, va);
    return ioctl_err(fd, PHXFS_IOCTL_MAP, &r);
}

int do_unmap(int fd, uint64_t dev_addr, uint64_t len, const void *va) {
    auto r = req(dev_addr, len, va);
    return ioctl_err(fd, PHXFS_IOCTL_UNMAP, &r);
}

// Runs fn in a child; returns its wait status.
template <class F> int in_child(F fn) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        fn();
        _exit(0);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
}

bool killed_by(int status, int sig) {
    return WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

class Kmod : public ::testing::Test {
  protected:
    void SetUp() override {
        fd_ = ::open(kNode, O_RDWR);
        ASSERT_GE(fd_, 0) << strerror(errno);
        mapped0_ = counter("mapped_bytes");
        ASSERT_EQ(mapped0_, 0);
    }
    void TearDown() override {
        for (auto [va, len] : vmas_)
            ::munmap(va, len);
        if (fd_ >= 0)
            ::close(fd_);
        EXPECT_EQ(counter("mapped_bytes"), 0) << "a mapping outlived its VMA";
        EXPECT_EQ(counter("pages_busy"), 0) << "page references leaked";
        // munmap hands pins to the drain, which unpins them in the background;
        // until it has, their ranges are still their old file's (EBUSY to the
        // next test's file). Thousands of them take seconds under KASAN and
        // lockdep (the P2PDMA kernel).
        for (int i = 0; i < 6000 && counter("draining") != 0; ++i)
            ::usleep(10000);
        EXPECT_EQ(counter("draining"), 0) << "pins did not drain";
    }
    uint8_t *vma(size_t len, int fd = -1) {
        void *va = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd < 0 ? fd_ : fd, 0);
        EXPECT_NE(va, MAP_FAILED) << strerror(errno);
        if (va == MAP_FAILED)
            return nullptr;
        vmas_.emplace_back(va, len);
        return static_cast<uint8_t *>(va);
    }
    int fd_ = -1;
    int64_t mapped0_ = 0;
    std::vector<std::pair<void *, size_t>> vmas_;
};

TEST_F(Kmod, InfoDescribesTheDevice) {
    phxfs_ioctl_info info{};
    info.size = sizeof info;
    ASSERT_EQ(ioctl_err(fd_, PHXFS_IOCTL_INFO, &info), 0);
    EXPECT_EQ(info.abi_version, PHXFS_ABI_VERSION);
    EXPECT_EQ(info.provider, PHXFS_PROVIDER_PCIBAR);
    EXPECT_STREQ(info.name, "pcibar");
    EXPECT_EQ(info.page_size, kPage);
    EXPECT_EQ(info.bar_size, 512ull << 20);
    // The suite's P2PDMA kernel (tests/vm/kernel.sh) gives pcibar the
    // kernel's P2PDMA pages; Debian's kernels have none.
    utsname u{};
    ::uname(&u);
    EXPECT_EQ((info.flags & PHXFS_INFO_P2PDMA) != 0, std::strstr(u.release, "p2pdma") != nullptr)
        << u.release;
    info.size = sizeof info - 4; // an older or newer layout
    EXPECT_EQ(ioctl_err(fd_, PHXFS_IOCTL_INFO, &info), EINVAL);
    EXPECT_EQ(ioctl_err(fd_, PHXFS_IOCTL_INFO, nullptr), EFAULT);
    EXPECT_EQ(ioctl_err(fd_, _IOWR(PHXFS_IOCTL_MAGIC, 9, phxfs_ioctl_info), &info), ENOTTY);
}

TEST_F(Kmod, BadMapArgumentsAreRefused) {
    const uint64_t base = bar_base();
    uint8_t *va = vma(4 * kPage);
    ASSERT_NE(va, nullptr);
    const int64_t errors0 = counter("errors");
    auto r = req(base, kPage, va);
    r.size = 8;
    EXPECT_EQ(ioctl_err(fd_, PHXFS_IOCTL_MAP, &r), EINVAL) << "size";
    r = req(base, kPage, va);
    r.flags = 1;
    EXPECT_EQ(ioctl_err(fd_, PHXFS_IOCTL_MAP, &r), EINVAL) << "flags";
    EXPECT_EQ(do_map(fd_, base, 0, va), EINVAL) << "zero length";
    EXPECT_EQ(do_map(fd_, base + 1, kPage, va), EINVAL) << "unaligned device address";
    EXPECT_EQ(do_map(fd_, base, kPage + 1, va), EINVAL) << "unaligned length";
    EXPECT_EQ(do_map(fd_, base, kPage, va + 1), EINVAL) << "unaligned user address";
    EXPECT_EQ(do_map(fd_, ~0ull & ~(kPage - 1), 2 * kPage, va), EINVAL) << "device range wraps";
    EXPECT_EQ(do_map(fd_, 512ull << 20, kPage, va), EINVAL) << "beyond the BAR";
    EXPECT_EQ(do_map(fd_, (512ull << 20) - kPage, 2 * kPage, va), EINVAL) << "crosses BAR end";
    EXPECT_EQ(do_map(fd_, base, 5 * kPage, va), EINVAL) << "longer than the VMA";
    EXPECT_EQ(do_map(fd_, base, kPage, reinterpret_cast<void *>(~0ull & ~(kPage - 1))), EINVAL)
        << "user range wraps";
    std::vector<uint8_t> heap(3 * kPage);
    uint8_t *not_ours = reinterpret_cast<uint8_t *>(
        (reinterpret_cast<uintptr_t>(heap.data()) + kPage - 1) & ~(kPage - 1));
    EXPECT_EQ(do_map(fd_, base, kPage, not_ours), EINVAL) << "not a phxfs VMA";
    const int other = ::open(kNode, O_RDWR);
    ASSERT_GE(other, 0);
    EXPECT_EQ(do_map(other, base, kPage, va), EINVAL) << "VMA of another open file";
    ::close(other);
    EXPECT_EQ(ioctl_err(fd_, PHXFS_IOCTL_MAP, reinterpret_cast<void *>(8)), EFAULT);
    EXPECT_EQ(counter("maps"), counter("unmaps"));
    EXPECT_GE(counter("errors") - errors0, 14);
}

TEST_F(Kmod, PrivateMappingsAndOffsetsAreRefused) {
    errno = 0;
    EXPECT_EQ(::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_, 0), MAP_FAILED);
    EXPECT_EQ(errno, EINVAL);
    errno = 0;
    EXPECT_EQ(::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, kPage), MAP_FAILED);
    EXPECT_EQ(errno, EINVAL) << "the device address goes in MAP, not in the mmap offset";
}

TEST_F(Kmod, OverlapIsBusyAndUnmapMustMatch) {
    const uint64_t base = bar_base();
    uint8_t *va = vma(8 * kPage);
    ASSERT_EQ(do_map(fd_, base, 4 * kPage, va), 0);
    EXPECT_EQ(do_map(fd_, base, 4 * kPage, va), EBUSY);
    EXPECT_EQ(do_map(fd_, base, 2 * kPage, va + 3 * kPage), EBUSY);
    EXPECT_EQ(counter("mapped_bytes"), 4 * kPage);
    EXPECT_EQ(do_unmap(fd_, base, 4 * kPage, va + 4 * kPage), ENOENT) << "never mapped";
    EXPECT_EQ(do_unmap(fd_, base, 2 * kPage, va), ENOENT) << "part of a mapping";
    EXPECT_EQ(do_unmap(fd_, base + kPage, 4 * kPage, va), ENOENT) << "other device address";
    EXPECT_EQ(do_unmap(fd_, base, 4 * kPage, va), 0);
    EXPECT_EQ(do_unmap(fd_, base, 4 * kPage, va), ENOENT) << "twice";
    EXPECT_EQ(counter("mapped_bytes"), 0);
    EXPECT_EQ(do_map(fd_, base, 2 * kPage, va + 6 * kPage), 0) << "free again";
}

// Two user mappings of one device range see the same bytes: device memory.
TEST_F(Kmod, MappingsShareDeviceMemory) {
    const uint64_t off = bar_base() + (1 << 20);
    uint8_t *a = vma(16 * kPage);
    uint8_t *b = vma(16 * kPage);
    ASSERT_EQ(do_map(fd_, off, 16 * kPage, a), 0);
    ASSERT_EQ(do_map(fd_, off, 16 * kPage, b), 0);
    for (size_t i = 0; i < 16 * kPage; ++i)
        a[i] = static_cast<uint8_t>(i * 7 + 3);
    EXPECT_EQ(std::memcmp(a, b, 16 * kPage), 0);
}

TEST_F(Kmod, AccessAfterUnmapFaults) {
    const uint64_t base = bar_base();
    const int status = in_child([&] {
        uint8_t *va = static_cast<uint8_t *>(
            ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
        if (va == MAP_FAILED || do_map(fd_, base, kPage, va) || do_unmap(fd_, base, kPage, va))
            _exit(3);
        volatile uint8_t x = va[0]; // no page there any more: SIGBUS
        (void)x;
        _exit(4);
    });
    EXPECT_TRUE(killed_by(status, SIGBUS)) << "status " << status;
}

TEST_F(Kmod, SplitAndMoveAreRefused) {
    uint8_t *va = vma(4 * kPage);
    ASSERT_EQ(do_map(fd_, bar_base(), 4 * kPage, va), 0);
    errno = 0;
    EXPECT_EQ(::munmap(va + kPage, kPage), -1) << "partial munmap";
    EXPECT_EQ(errno, EINVAL);
    errno = 0;
    EXPECT_EQ(::mremap(va, 4 * kPage, 8 * kPage, MREMAP_MAYMOVE), MAP_FAILED) << "grow";
    EXPECT_EQ(::mremap(va, 4 * kPage, 2 * kPage, 0), MAP_FAILED) << "shrink";
    va[0] = 42; // still mapped, still whole
    EXPECT_EQ(va[0], 42);
}

TEST_F(Kmod, MunmapWithoutUnmap) {
    uint8_t *va = static_cast<uint8_t *>(
        ::mmap(nullptr, 64 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    ASSERT_NE(va, MAP_FAILED);
    ASSERT_EQ(do_map(fd_, bar_base(), 32 * kPage, va), 0);
    ASSERT_EQ(do_map(fd_, bar_base() + (1 << 20), 32 * kPage, va + 32 * kPage), 0);
    EXPECT_EQ(counter("mapped_bytes"), 64 * kPage);
    EXPECT_EQ(::munmap(va, 64 * kPage), 0);
    EXPECT_EQ(counter("mapped_bytes"), 0);
}

TEST_F(Kmod, CloseWhileMappedKeepsTheMapping) {
    uint8_t *va = vma(kPage);
    ASSERT_EQ(do_map(fd_, bar_base(), kPage, va), 0);
    va[10] = 0x5a;
    ASSERT_EQ(::close(fd_), 0);
    fd_ = -1;
    EXPECT_EQ(va[10], 0x5a) << "the VMA holds the file";
    EXPECT_EQ(counter("mapped_bytes"), kPage);
}

TEST_F(Kmod, ExitWhileMapped) {
    const int status = in_child([&] {
        for (int i = 0; i < 8; ++i) {
            void *va = ::mmap(nullptr, 256 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
            if (va == MAP_FAILED || do_map(fd_, bar_base() + i * 256 * kPage, 256 * kPage, va))
                _exit(3);
        }
        _exit(0); // no UNMAP, no munmap
    });
    EXPECT_EQ(status, 0);
    EXPECT_EQ(counter("mapped_bytes"), 0);
}

TEST_F(Kmod, KilledDuringDirectIo) {
    const char *disk = std::getenv("PHXFS_GUEST_DISK");
    if (!disk)
        GTEST_SKIP() << "PHXFS_GUEST_DISK not set";
    for (int round = 0; round < 4; ++round) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            const size_t len = 16 << 20;
            void *va = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
            const int dfd = ::open(disk, O_RDONLY | O_DIRECT);
            if (va == MAP_FAILED || dfd < 0 || do_map(fd_, bar_base(), len, va))
                _exit(3);
            std::thread t([&] {
                for (;;)
                    if (::pread(dfd, va, len, 0) != static_cast<ssize_t>(len))
                        _exit(5);
            });
            for (;;)
                ::pause();
        }
        ::usleep(20000 + round * 30000);
        ::kill(pid, SIGKILL);
        int status = 0;
        ::waitpid(pid, &status, 0);
        EXPECT_TRUE(killed_by(status, SIGKILL)) << "status " << status;
    }
    EXPECT_EQ(counter("mapped_bytes"), 0);
}

// fork() does not copy a phxfs VMA; with MADV_DOFORK it does, and an UNMAP
// in the parent removes the pages from the child too.
TEST_F(Kmod, ForkWhileMapped) {
    uint8_t *va = vma(kPage);
    ASSERT_EQ(do_map(fd_, bar_base(), kPage, va), 0);
    va[0] = 7;
    EXPECT_TRUE(killed_by(in_child([&] {
                              volatile uint8_t x = va[0];
                              (void)x;
                          }),
                          SIGSEGV))
        << "VM_DONTCOPY: the child has no such mapping";
    EXPECT_EQ(va[0], 7);

    ASSERT_EQ(::madvise(va, kPage, MADV_DOFORK), 0);
    int to_child[2], to_parent[2];
    ASSERT_EQ(::pipe(to_child), 0);
    ASSERT_EQ(::pipe(to_parent), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
        char c = va[0]; // the same device memory
        if (::write(to_parent[1], &c, 1) != 1 || ::read(to_child[0], &c, 1) != 1)
            _exit(3);
        volatile uint8_t x = va[0]; // unmapped by the parent meanwhile
        (void)x;
        _exit(4);
    }
    char c = 0;
    ASSERT_EQ(::read(to_parent[0], &c, 1), 1);
    EXPECT_EQ(c, 7);
    EXPECT_EQ(do_unmap(fd_, bar_base(), kPage, va), 0);
    ASSERT_EQ(::write(to_child[1], &c, 1), 1);
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(killed_by(status, SIGBUS)) << "status " << status;
    for (int f : {to_child[0], to_child[1], to_parent[0], to_parent[1]})
        ::close(f);
}

// A BAR range belongs to the open file that mapped it: another process (or
// another open file) gets EBUSY until the owner lets go.
TEST_F(Kmod, RangesBelongToTheirOpenFile) {
    const uint64_t off = bar_base() + (2 << 20);
    uint8_t *va = vma(2 * kPage);
    ASSERT_EQ(do_map(fd_, off, 2 * kPage, va), 0);
    std::memset(va, 0x11, 2 * kPage);
    auto other = [&](uint64_t dev) {
        return in_child([&] {
            const int fd = ::open(kNode, O_RDWR);
            auto *p = static_cast<uint8_t *>(
                ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
            if (fd < 0 || p == MAP_FAILED)
                _exit(3);
            const int err = do_map(fd, dev, kPage, p);
            if (err == 0)
                std::memset(p, 0xc3, kPage);
            _exit(err == 0 ? 0 : err == EBUSY ? 16 : 4);
        });
    };
    EXPECT_EQ(WEXITSTATUS(other(off + kPage)), 16) << "another file mapped an owned range";
    EXPECT_EQ(va[kPage], 0x11);
    EXPECT_EQ(do_unmap(fd_, off, 2 * kPage, va), 0);
    EXPECT_EQ(WEXITSTATUS(other(off + kPage)), 0) << "free once its owner let go";
}

// mmap file offsets come from a bounded set of slots that munmap gives
// back: the first module's ever-growing offset counter overflowed.
TEST_F(Kmod, MmapSlotsAreBoundedAndReused) {
    std::vector<void *> v;
    for (;;) {
        void *va = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        if (va == MAP_FAILED)
            break;
        v.push_back(va);
    }
    EXPECT_EQ(errno, ENOMEM);
    EXPECT_EQ(v.size(), 1024u) << "per-file cap on mmaps";
    ASSERT_EQ(::munmap(v.back(), kPage), 0);
    v.pop_back();
    void *again = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    EXPECT_NE(again, MAP_FAILED) << "a slot comes back with munmap";
    v.push_back(again);
    for (void *va : v)
        ::munmap(va, kPage);
}

// MAPs per open file are capped: kernel memory an unprivileged user can pin
// is bounded (and charged to its memory cgroup).
TEST_F(Kmod, MapsPerFileAreCapped) {
    constexpr uint64_t kCap = 65536;
    uint8_t *va = vma((kCap + 1) * kPage);
    ASSERT_NE(va, nullptr);
    uint64_t i = 0;
    for (; i < kCap; ++i)
        if (do_map(fd_, i * kPage, kPage, va + i * kPage))
            break;
    EXPECT_EQ(i, kCap) << strerror(errno);
    EXPECT_EQ(do_map(fd_, kCap * kPage, kPage, va + kCap * kPage), ENOSPC);
    EXPECT_EQ(do_unmap(fd_, 0, kPage, va), 0);
    EXPECT_EQ(do_map(fd_, kCap * kPage, kPage, va + kCap * kPage), 0) << "one came back";
}

// As many mmap/munmap cycles of the largest VMA that fits as it took to push
// the first module's offset counter past 2^51 pages (where a byte offset no
// longer fits a loff_t): after them, UNMAP must still remove the pages.
TEST_F(Kmod, UnmapStillZapsAfterManyHugeMmaps) {
    uint64_t huge = 0;
    for (uint64_t tib = 120; tib >= 8 && !huge; tib -= 8) {
        void *va = ::mmap(nullptr, tib << 40, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        if (va != MAP_FAILED) {
            huge = tib << 40;
            ::munmap(va, huge);
        }
    }
    ASSERT_NE(huge, 0u) << "no room for an 8 TiB VMA";
    const uint64_t cycles = (1ull << 51) / (huge / kPage) + 2;
    for (uint64_t i = 0; i < cycles; ++i) {
        void *va = ::mmap(nullptr, huge, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        ASSERT_NE(va, MAP_FAILED) << "cycle " << i << ": " << strerror(errno);
        ASSERT_EQ(::munmap(va, huge), 0);
    }
    std::printf("%llu cycles of %llu TiB mmaps\n", (unsigned long long)cycles,
                (unsigned long long)(huge >> 40));
    const uint64_t base = bar_base();
    const int status = in_child([&] {
        auto *va = static_cast<uint8_t *>(
            ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
        if (va == MAP_FAILED || do_map(fd_, base, kPage, va))
            _exit(3);
        va[0] = 1;
        if (do_unmap(fd_, base, kPage, va))
            _exit(5);
        volatile uint8_t x = va[0]; // must fault: the page is gone
        (void)x;
        _exit(4);
    });
    EXPECT_TRUE(killed_by(status, SIGBUS)) << "status " << status;
}

TEST_F(Kmod, ManyMapsAndThreads) {
    constexpr int kThreads = 4, kSlots = 64, kRounds = 50;
    uint8_t *va = vma(kThreads * kSlots * kPage);
    std::atomic<int> bad{0};
    std::vector<std::thread> th;
    for (int t = 0; t < kThreads; ++t)
        th.emplace_back([&, t] {
            for (int r = 0; r < kRounds; ++r)
                for (int s = 0; s < kSlots; ++s) {
                    const uint64_t i = t * kSlots + s;
                    const uint64_t dev = bar_base() + i * kPage;
                    if (do_map(fd_, dev, kPage, va + i * kPage) ||
                        do_unmap(fd_, dev, kPage, va + i * kPage))
                        ++bad;
                }
        });
    for (auto &t : th)
        t.join();
    EXPECT_EQ(bad, 0);
}

TEST_F(Kmod, OneLargeMap) {
    const uint64_t len = 64ull << 20;
    uint8_t *va = vma(len);
    ASSERT_EQ(do_map(fd_, bar_base() - len, len, va), 0);
    EXPECT_EQ(counter("mapped_bytes"), static_cast<int64_t>(len));
    va[len - 1] = 1;
}

TEST_F(Kmod, UnloadRefusedWhileOpen) {
    errno = 0;
    EXPECT_EQ(::syscall(SYS_delete_module, "phxfs", O_NONBLOCK), -1);
    EXPECT_TRUE(errno == EWOULDBLOCK || errno == EBUSY) << strerror(errno);
    EXPECT_TRUE(std::ifstream("/sys/module/phxfs/refcnt").good());
}

} // namespace
