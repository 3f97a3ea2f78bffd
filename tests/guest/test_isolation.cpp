// One user of phxfs.ko against another, inside the VM: an attacker keeps
// pages of its device memory referenced after giving the memory up (one
// page spliced into a pipe, the whole range registered as io_uring fixed
// buffers), then a victim takes memory. Device memory must not be handed to
// anyone while a page of it is referenced, so the victim's bytes are never
// seen through the attacker's pipe and never changed by its fixed-buffer
// reads, and nothing waits for the attacker to let go. Both providers:
// pcibar (ranges owned per open file) and nvidia (the NVIDIA stand-in keeps
// pinned GPU pages out of reuse, as the driver promises for persistent pins).
#include "guest.hpp"

#include <phxfs/phxfs_ioctl.h>

#include <fcntl.h>
#include <liburing.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <set>

using namespace phxguest;

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kLen = 1 << 20;
constexpr uint8_t kAttacker = 0xaa, kSecret = 0x5c;

bool fixed_buffers_expected() {
    utsname u{};
    ::uname(&u);
    int major = 0, minor = 0;
    std::sscanf(u.release, "%d.%d", &major, &minor);
    return major > 6 || (major == 6 && minor >= 3);
}

bool all_bytes(const uint8_t *p, size_t n, uint8_t v) {
    for (size_t i = 0; i < n; ++i)
        if (p[i] != v)
            return false;
    return true;
}

// What the attacker keeps after giving its memory up.
struct Leftovers {
    int pipe[2] = {-1, -1};
    io_uring ring{};
    bool ring_up = false, fixed = false, spliced = false;
    uint8_t *stale = nullptr; // the address the fixed buffer was registered at

    // Maps dev_addr through its own open file of node, fills it, keeps
    // references, then UNMAPs, munmaps and closes.
    void take(const char *node, uint64_t dev_addr) {
        const int fd = ::open(node, O_RDWR);
        ASSERT_GE(fd, 0);
        auto *m = static_cast<uint8_t *>(
            ::mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        ASSERT_NE(m, MAP_FAILED);
        ASSERT_EQ(map_ioctl(fd, PHXFS_IOCTL_MAP, dev_addr, kLen, m), 0);
        std::memset(m, kAttacker, kLen);
        ASSERT_EQ(::pipe(pipe), 0);
        iovec one{m, kPage};
        // P2PDMA pages: GUP refuses every long-term pin but O_DIRECT's.
        const bool p2p = p2pdma_pages(node);
        spliced = ::vmsplice(pipe[1], &one, 1, 0) == static_cast<ssize_t>(kPage);
        EXPECT_EQ(spliced, !p2p) << "vmsplice of device pages: " << std::strerror(errno);
        if (p2p) {
            EXPECT_EQ(errno, EREMOTEIO);
        }
        ASSERT_EQ(io_uring_queue_init(4, &ring, 0), 0);
        ring_up = true;
        iovec all{m, kLen};
        fixed = io_uring_register_buffers(&ring, &all, 1) == 0;
        EXPECT_EQ(fixed, fixed_buffers_expected() && !p2p)
            << "fixed buffers over device pages: 6.3+, never P2PDMA pages";
        stale = m;
        ASSERT_EQ(map_ioctl(fd, PHXFS_IOCTL_UNMAP, dev_addr, kLen, m), 0);
        ASSERT_EQ(::munmap(m, kLen), 0);
        ::close(fd);
    }

    // Reads the spliced page back: whatever the device memory holds now.
    void expect_pipe_shows_own_bytes() {
        if (!spliced)
            return;
        std::vector<uint8_t> buf(kPage);
        ASSERT_EQ(::read(pipe[0], buf.data(), kPage), static_cast<ssize_t>(kPage));
        EXPECT_TRUE(all_bytes(buf.data(), kPage, kAttacker))
            << "the pipe shows bytes the attacker never wrote (first: " << int(buf[0]) << ")";
    }

    // A disk read into the stale fixed buffer: DMA into whatever memory the
    // buffer's pages are now.
    void read_fixed_from_disk() {
        if (!fixed || !raw_disk())
            return;
        const int dfd = ::open(raw_disk(), O_RDONLY | O_DIRECT);
        ASSERT_GE(dfd, 0);
        io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_read_fixed(sqe, dfd, stale, kLen, 0, 0);
        ASSERT_EQ(io_uring_submit(&ring), 1);
        io_uring_cqe *cqe = nullptr;
        ASSERT_EQ(io_uring_wait_cqe(&ring, &cqe), 0);
        std::printf("attacker's READ_FIXED: %d\n", cqe->res);
        io_uring_cqe_seen(&ring, cqe);
        ::close(dfd);
    }

    void let_go() {
        for (int &f : pipe)
            if (f >= 0)
                ::close(std::exchange(f, -1));
        if (ring_up)
            io_uring_queue_exit(&ring);
        ring_up = fixed = false;
    }
    ~Leftovers() { let_go(); }
};

// A victim's 1 MiB mapping of dev_addr through its own open file.
struct Victim {
    int fd = -1;
    uint8_t *m = nullptr;
    uint64_t dev = 0;

    int map(const char *node, uint64_t dev_addr) {
        fd = ::open(node, O_RDWR);
        m = static_cast<uint8_t *>(
            ::mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        dev = dev_addr;
        return map_ioctl(fd, PHXFS_IOCTL_MAP, dev_addr, kLen, m);
    }
    ~Victim() {
        if (m && m != MAP_FAILED) {
            map_ioctl(fd, PHXFS_IOCTL_UNMAP, dev, kLen, m);
            ::munmap(m, kLen);
        }
        if (fd >= 0)
            ::close(fd);
    }
};

// pcibar: BAR offsets of this file's tests, away from the other programs'.
constexpr uint64_t kBarA = 504ull << 20, kBarB = kBarA + kLen;

TEST(Isolation, PcibarRangeStaysOutOfReuseWhileReferenced) {
    if (::access("/dev/phxfs0", F_OK) != 0)
        GTEST_SKIP() << "no pcibar device";
    Leftovers attacker;
    attacker.take("/dev/phxfs0", kBarA);
    if (p2pdma_pages()) {
        // The kernel refused every long-term pin (take() checked that):
        // nothing holds the range once its owner lets go of it.
        EXPECT_EQ(wait_counter(0, "draining", 0), 0);
        Victim v;
        EXPECT_EQ(v.map("/dev/phxfs0", kBarA), 0) << "nothing references it";
        return;
    }
    EXPECT_GE(phx_counter(0, "draining"), 1);
    EXPECT_EQ(phx_counter(0, "mapped_bytes"), 0);
    {
        Victim v;
        EXPECT_EQ(v.map("/dev/phxfs0", kBarA), EBUSY) << "a referenced range went to another file";
        EXPECT_EQ(map_ioctl(v.fd, PHXFS_IOCTL_MAP, kBarA + kLen - kPage, kLen, v.m), EBUSY)
            << "overlapping its last page";
        Victim w;
        ASSERT_EQ(w.map("/dev/phxfs0", kBarB), 0) << "the range next to it is free";
        std::memset(w.m, kSecret, kLen);
        attacker.expect_pipe_shows_own_bytes();
        attacker.read_fixed_from_disk();
        EXPECT_TRUE(all_bytes(w.m, kLen, kSecret)) << "the victim's memory changed";
    }
    attacker.let_go();
    EXPECT_EQ(wait_counter(0, "draining", 0), 0) << "the pins did not go with the references";
    Victim again;
    EXPECT_EQ(again.map("/dev/phxfs0", kBarA), 0) << "free again once nothing references it";
}

TEST(Isolation, NvidiaMemoryStaysOutOfReuseWhileReferenced) {
    if (::access("/sys/kernel/debug/nvstub/alloc", F_OK) != 0)
        GTEST_SKIP() << "no NVIDIA stand-in";
    const int64_t held0 = gpu_held();
    const uint64_t a = gpu_alloc(kLen);
    std::set<uint64_t> a_pages;
    for (auto [va, off] : gpu_pages())
        if (va >= a && va < a + kLen)
            a_pages.insert(off);
    ASSERT_EQ(a_pages.size(), kLen / kGpuPage);
    Leftovers attacker;
    attacker.take("/dev/phxfs1", a);
    const auto t0 = std::chrono::steady_clock::now();
    gpu_free(a); // cudaFree while pages are referenced
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 2.0) << "cudaFree waited for the attacker";
    EXPECT_EQ(gpu_held(), held0 + static_cast<int64_t>(a_pages.size()));
    EXPECT_GE(phx_counter(1, "draining"), 1);
    {
        const uint64_t b = gpu_alloc(kLen);
        for (auto [va, off] : gpu_pages()) {
            if (va >= b && va < b + kLen) {
                EXPECT_EQ(a_pages.count(off), 0u) << "referenced GPU page reused: " << off;
            }
        }
        {
            Victim v;
            ASSERT_EQ(v.map("/dev/phxfs1", b), 0);
            std::memset(v.m, kSecret, kLen);
            attacker.expect_pipe_shows_own_bytes();
            attacker.read_fixed_from_disk();
            EXPECT_TRUE(all_bytes(v.m, kLen, kSecret)) << "the victim's memory changed";
        }
        gpu_free(b);
    }
    attacker.let_go();
    EXPECT_EQ(wait_counter(1, "draining", 0), 0);
    EXPECT_EQ(gpu_held(), held0) << "the GPU pages did not go back once unreferenced";
    EXPECT_EQ(phx_counter(1, "pinned_bytes"), 0);
}

// What one owner left in a BAR range is cleared before another open file
// may have it; bytes another pin of the same owner still maps are kept.
TEST(Isolation, PcibarRangeIsClearedForTheNextOwner) {
    const char *param = "/sys/module/phxfs/parameters/pcibar_scrub";
    if (::access("/dev/phxfs0", F_OK) != 0 || ::access(param, W_OK) != 0)
        GTEST_SKIP() << "no pcibar device";
    std::ofstream(param) << 1;
    {
        const int fd = ::open("/dev/phxfs0", O_RDWR);
        auto *m = static_cast<uint8_t *>(
            ::mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        ASSERT_NE(m, MAP_FAILED);
        // Two pins of one owner sharing the BAR page kBarA + kPage.
        ASSERT_EQ(map_ioctl(fd, PHXFS_IOCTL_MAP, kBarA, 2 * kPage, m), 0);
        ASSERT_EQ(map_ioctl(fd, PHXFS_IOCTL_MAP, kBarA + kPage, 2 * kPage, m + 2 * kPage), 0);
        std::memset(m, kSecret, 2 * kPage);
        ASSERT_EQ(map_ioctl(fd, PHXFS_IOCTL_UNMAP, kBarA, 2 * kPage, m), 0);
        EXPECT_TRUE(all_bytes(m + 2 * kPage, kPage, kSecret)) << "the other pin's page was cleared";
        ::munmap(m, 4 * kPage);
        ::close(fd);
    }
    EXPECT_EQ(wait_counter(0, "draining", 0), 0);
    Victim next;
    ASSERT_EQ(next.map("/dev/phxfs0", kBarA), 0);
    EXPECT_TRUE(all_bytes(next.m, 3 * kPage, 0)) << "the last owner's bytes were left behind";
    std::ofstream(param) << 0;
}

// The module stays while any page of its devices is referenced, even with
// no file of it open: unloading is refused, not a use after free.
TEST(Isolation, UnloadRefusedWhilePagesAreReferenced) {
    if (::access("/dev/phxfs0", F_OK) != 0)
        GTEST_SKIP() << "no pcibar device";
    if (p2pdma_pages())
        GTEST_SKIP() << "P2PDMA pages: the kernel refuses the long-term pins that would hold "
                        "them (Leftovers::take checks it); the unload would succeed";
    {
        Leftovers attacker;
        attacker.take("/dev/phxfs0", kBarA);
        errno = 0;
        EXPECT_EQ(::syscall(SYS_delete_module, "phxfs", O_NONBLOCK), -1);
        EXPECT_TRUE(errno == EWOULDBLOCK || errno == EBUSY) << strerror(errno);
    }
    EXPECT_EQ(wait_counter(0, "draining", 0), 0);
    EXPECT_EQ(read_number("/sys/module/phxfs/refcnt"), 0) << "references outlived the pins";
}

} // namespace
