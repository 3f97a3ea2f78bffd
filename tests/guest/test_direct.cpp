// The direct path inside the VM, through the public API only: phxfs.ko's
// pcibar provider serves the ivshmem BAR as device 0, the emulated NVMe disk
// and an ext4 file system on a second disk are the storage.
//
// Each test takes its own BAR and disk ranges (never reused), and prints
//   HOSTCHECK bar <bar_offset> disk <disk_offset> len <bytes>
// for every range whose final contents must be equal: the host compares the
// BAR's backing file with the disk image after the VM exits, so no CPU read
// in the guest is trusted for the verdict. Environment (set by the harness):
//   PHXFS_GUEST_DISK     raw disk the tests may overwrite (/dev/nvme0n1)
//   PHXFS_GUEST_DISK_OFF first byte of the disk the tests may use (0)
//   PHXFS_GUEST_BAR_OFF  first BAR byte the tests may use (0)
//   PHXFS_GUEST_FS       mount point of an ext4 file system (skips if unset)
#include "bar_fixture.hpp"

#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <thread>

using namespace phxtest;
using namespace phxguest;

namespace {

// Reads from the raw disk straight into the BAR: every byte by DMA.
TEST_F(Guest, DiskToBarAligned) {
    for (uint64_t len : {4096ull, 65536ull, (1ull << 20) + 4096, 16ull << 20, 256ull << 20}) {
        auto [bar, disk] = ranges.take(len);
        disk_pattern(disk, len, 7);
        uint8_t *t = reg(bar, len);
        const int fd = ::open(disk_path(), O_RDONLY);
        ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, disk),
                  static_cast<ssize_t>(len))
            << phxfs_last_error();
        ::close(fd);
        const size_t probe = std::min<uint64_t>(len, 4096);
        EXPECT_EQ(first_mismatch(t, probe, disk, 7), probe) << "len " << len;
        hostcheck_bar(bar, disk, len);
    }
    const phxfs_stats st = stats();
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, 0u) << "aligned reads must not bounce";
    EXPECT_GT(st.path[PHXFS_PATH_DIRECT].read_bytes, 256ull << 20);
}

// Unaligned offsets and lengths: the aligned middle by DMA, the edges bounce.
TEST_F(Guest, DiskToBarUnaligned) {
    const uint64_t len = (4 << 20) + 1000;
    const uint64_t span = (4 << 20) + 8192; // O_DIRECT needs whole blocks
    auto [bar, disk] = ranges.take(span);
    disk_pattern(disk, span, 8);
    reg(bar, span);
    const int fd = ::open(disk_path(), O_RDONLY | O_DIRECT);
    // buffer offset == file offset mod 4 KiB, so the middle can go direct
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 100, len, disk + 100),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    ::close(fd);
    hostcheck_bar(bar + 100, disk + 100, len);
    const phxfs_stats st = stats();
    // all but the partial first and last blocks of the disk's direct-I/O
    // alignment (512 where statx reports it for block devices, 6.11+)
    const uint64_t a = dio_align(disk_path()), first = disk + 100, end = first + len;
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes, end / a * a - (first + a - 1) / a * a);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, len - st.path[PHXFS_PATH_DIRECT].read_bytes);
    EXPECT_GE(st.fallbacks, 1u);
}

// Device memory to disk by DMA: the NVMe controller reads the BAR.
TEST_F(Guest, BarToDisk) {
    const uint64_t len = 8 << 20;
    auto [bar, disk] = ranges.take(len);
    uint8_t *t = reg(bar, len);
    fill_pattern_fast(t, len, disk, 9); // the CPU fills device memory
    const int fd = ::open(disk_path(), O_RDWR);
    ASSERT_EQ(phxfs_write({fd, 0}, reinterpret_cast<void *>(bar), 0, len, disk),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    ::close(fd);
    hostcheck_bar(bar, disk, len);
    EXPECT_EQ(stats().path[PHXFS_PATH_DIRECT].write_bytes, len);
}

TEST_F(Guest, DirectModeRefusesToBounce) {
    phxfs_config saved{};
    saved.size = sizeof saved;
    ASSERT_EQ(phxfs_get_config(&saved), 0);
    phxfs_config c = saved;
    c.mode = PHXFS_MODE_DIRECT;
    ASSERT_EQ(phxfs_set_config(&c), 0);
    auto [bar, disk] = ranges.take(1 << 20);
    disk_pattern(disk, 1 << 20, 10);
    reg(bar, 1 << 20);
    const int fd = ::open(disk_path(), O_RDONLY);
    EXPECT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, 1 << 20, disk), 1 << 20);
    errno = 0;
    EXPECT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 1, 5000, disk + 1), -1);
    EXPECT_EQ(errno, ENOTSUP) << phxfs_last_error();
    ::close(fd);
    ASSERT_EQ(phxfs_set_config(&saved), 0);
    hostcheck_bar(bar, disk, 1 << 20);
}

// A BAR range another process holds: registration fails with EBUSY and a
// message that says why, and nothing is left registered.
TEST_F(Guest, RangeHeldByAnotherProcessIsRefusedClearly) {
    auto [bar, disk] = ranges.take(1 << 20);
    (void)disk;
    int ready[2], done[2];
    ASSERT_EQ(::pipe(ready), 0);
    ASSERT_EQ(::pipe(done), 0);
    const pid_t pid = ::fork();
    if (pid == 0) { // the other process holds the range through its own file
        const int fd = ::open("/dev/phxfs0", O_RDWR);
        void *va = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        char c = map_ioctl(fd, PHXFS_IOCTL_MAP, bar, 1 << 20, va) == 0 ? 'y' : 'n';
        if (::write(ready[1], &c, 1) != 1 || ::read(done[0], &c, 1) != 1)
            _exit(3);
        _exit(0);
    }
    char c = 0;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    ASSERT_EQ(c, 'y');
    void *t = nullptr;
    errno = 0;
    EXPECT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(bar), 1 << 20, &t), -1);
    EXPECT_EQ(errno, EBUSY);
    EXPECT_NE(std::string(phxfs_last_error()).find("held by another open file"), std::string::npos)
        << phxfs_last_error();
    ASSERT_EQ(::write(done[1], &c, 1), 1);
    ::waitpid(pid, nullptr, 0);
    for (int f : {ready[0], ready[1], done[0], done[1]})
        ::close(f);
    EXPECT_EQ(wait_counter(0, "draining", 0), 0);
    reg(bar, 1 << 20); // the owner exited: free again
}

TEST_F(Guest, ConcurrentThreads) {
    constexpr int kThreads = 4;
    constexpr uint64_t kLen = 4 << 20;
    std::vector<std::pair<uint64_t, uint64_t>> rs;
    for (int i = 0; i < kThreads; ++i) {
        rs.push_back(ranges.take(kLen));
        disk_pattern(rs.back().second, kLen, 20 + i);
        reg(rs.back().first, kLen);
    }
    std::atomic<int> bad{0};
    std::vector<std::thread> th;
    for (int i = 0; i < kThreads; ++i)
        th.emplace_back([&, i] {
            const int fd = ::open(disk_path(), O_RDONLY);
            for (int round = 0; round < 3; ++round)
                if (phxfs_read({fd, 0}, reinterpret_cast<void *>(rs[i].first), 0, kLen,
                               rs[i].second) != static_cast<ssize_t>(kLen))
                    ++bad;
            ::close(fd);
        });
    for (auto &t : th)
        t.join();
    EXPECT_EQ(bad, 0) << phxfs_last_error();
    for (auto &[bar, disk] : rs)
        hostcheck_bar(bar, disk, kLen);
}

TEST_F(GuestFs, FileToBarAndPageCacheCoherence) {
    const std::string path = dir_ + "/coherent.dat";
    const uint64_t len = 2 << 20;
    make_pattern_file(path, len, 31); // through the page cache
    auto [bar, unused] = ranges.take(len);
    uint8_t *t = reg(bar, len);
    // A buffered write is seen by a later direct read.
    int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, 0),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    EXPECT_EQ(first_mismatch(t, len, 0, 31), len);
    EXPECT_EQ(stats().path[PHXFS_PATH_DIRECT].read_bytes, len);
    // A direct write is seen by a later buffered read.
    fill_pattern_fast(t, len, 0, 32);
    ASSERT_EQ(phxfs_write({fd, 0}, reinterpret_cast<void *>(bar), 0, len, 0),
              static_cast<ssize_t>(len));
    std::vector<uint8_t> back(len);
    ASSERT_EQ(::pread(fd, back.data(), len, 0), static_cast<ssize_t>(len));
    EXPECT_EQ(first_mismatch(back.data(), len, 0, 32), len);
    // Another process writes through the page cache; a direct read sees it.
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int cfd = ::open(path.c_str(), O_WRONLY);
        std::vector<uint8_t> d(len);
        fill_pattern(d.data(), len, 0, 33);
        _exit(::pwrite(cfd, d.data(), len, 0) == static_cast<ssize_t>(len) ? 0 : 1);
    }
    int status = -1;
    ::waitpid(pid, &status, 0);
    ASSERT_EQ(status, 0);
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, 0),
              static_cast<ssize_t>(len));
    EXPECT_EQ(first_mismatch(t, len, 0, 33), len);
    ::close(fd);
}

TEST_F(GuestFs, SparseFileReadsZerosIntoDeviceMemory) {
    const std::string path = dir_ + "/sparse.dat";
    const uint64_t len = 8 << 20;
    int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0644);
    ASSERT_EQ(::ftruncate(fd, len), 0);
    std::vector<uint8_t> d(4096);
    fill_pattern(d.data(), d.size(), 3 << 20, 40);
    ASSERT_EQ(::pwrite(fd, d.data(), d.size(), 3 << 20), 4096);
    ASSERT_EQ(::fsync(fd), 0);
    auto [bar, unused] = ranges.take(len);
    uint8_t *t = reg(bar, len);
    std::memset(t, 0xAA, len);
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, 0),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    for (uint64_t i = 0; i < len; i += 512) {
        const bool data = i >= (3u << 20) && i < (3u << 20) + 4096;
        ASSERT_EQ(t[i], data ? pattern_byte(i, 40) : 0) << "at " << i;
    }
    ::close(fd);
}

TEST_F(GuestFs, UnalignedFileEndAndShortRead) {
    const std::string path = dir_ + "/odd.dat";
    const uint64_t size = (1 << 20) + 333;
    make_pattern_file(path, size, 50);
    auto [bar, unused] = ranges.take(2 << 20);
    uint8_t *t = reg(bar, 2 << 20);
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, 2 << 20, 0),
              static_cast<ssize_t>(size))
        << phxfs_last_error();
    EXPECT_EQ(first_mismatch(t, size, 0, 50), size);
    ::close(fd);
}

// ext4 on the VM's NVMe disks (512-byte sectors) reports 512-byte direct-I/O
// alignment (statx STATX_DIOALIGN, 6.1+): sector-aligned reads go direct
// whole, with no 4 KiB head or tail through staging.
TEST_F(GuestFs, SectorAlignedRequestsGoDirectWhole) {
    const std::string path = dir_ + "/sectors.dat";
    const uint64_t size = 1 << 20;
    make_pattern_file(path, size, 60);
    auto [bar, unused] = ranges.take(size);
    uint8_t *t = reg(bar, size);
    const int fd = ::open(path.c_str(), O_RDWR);
    const uint64_t off = 512, len = 8192 + 1024;
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), off, len, off),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    EXPECT_EQ(first_mismatch(t + off, len, off, 60), len);
    phxfs_stats st = stats();
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes, len);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, 0u);
    EXPECT_EQ(st.fallbacks, 0u);
    // Writes go direct in whole pages only (a direct write must not share a
    // page with a buffered one: block devices do not serialise the two):
    // 3 KiB at 1.5 KiB goes through staging, 8 KiB at 4 KiB goes direct.
    fill_pattern(t + 1536, 3072, 1536, 61);
    ASSERT_EQ(phxfs_write({fd, 0}, reinterpret_cast<void *>(bar), 1536, 3072, 1536), 3072)
        << phxfs_last_error();
    EXPECT_EQ(stats().path[PHXFS_PATH_DIRECT].write_bytes, 0u);
    fill_pattern(t + 4096, 8192, 4096, 61);
    ASSERT_EQ(phxfs_write({fd, 0}, reinterpret_cast<void *>(bar), 4096, 8192, 4096), 8192)
        << phxfs_last_error();
    EXPECT_EQ(stats().path[PHXFS_PATH_DIRECT].write_bytes, 8192u);
    std::vector<uint8_t> back(4096 + 8192 - 1536); // [1.5 KiB, 12 KiB)
    ASSERT_EQ(::pread(fd, back.data(), back.size(), 1536), static_cast<ssize_t>(back.size()));
    EXPECT_EQ(first_mismatch(back.data(), back.size(), 1536, 61), back.size());
    ::close(fd);
}

// The library says which pages the device has: the kernel's P2PDMA pages on
// the suite's P2PDMA kernel, phxfs.ko's GENERIC ones on Debian's.
TEST_F(Guest, InfoReportsThePageType) {
    phxfs_device_info info{};
    info.size = sizeof info;
    ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
    utsname u{};
    ::uname(&u);
    EXPECT_EQ(info.page_type,
              std::strstr(u.release, "p2pdma") ? PHXFS_PAGES_P2PDMA : PHXFS_PAGES_GENERIC)
        << u.release;
    // A caller built against 0.1 gets the fields it knows, and no more.
    phxfs_device_info old{};
    old.size = offsetof(phxfs_device_info, page_type);
    old.page_type = 77;
    ASSERT_EQ(phxfs_device_get_info(0, &old), 0) << phxfs_last_error();
    EXPECT_STREQ(old.name, info.name);
    EXPECT_EQ(old.page_type, 77u);
}

// #10: on the P2PDMA kernel a disk on q35's root bus (PHXFS_GUEST_FAR_DISK)
// is across a host bridge the kernel's distance check does not whitelist:
// O_DIRECT into the device's pages fails with EREMOTEIO. Direct mode fails
// with that reason; auto mode moves the bytes through staging, both ways.
TEST_F(Guest, DistanceRefusedDiskFallsBackWithTheReason) {
    const char *far = std::getenv("PHXFS_GUEST_FAR_DISK");
    if (!p2pdma_pages() || !far || !*far)
        GTEST_SKIP() << "P2PDMA kernel with a disk across the root complex only";
    const uint64_t len = 1 << 20;
    auto [bar, unused] = ranges.take(len);
    uint8_t *t = reg(bar, len);
    {
        const int fd = ::open(far, O_WRONLY | O_DIRECT);
        ASSERT_GE(fd, 0) << far;
        auto buf = host_buffer(len);
        fill_pattern_fast(buf.get(), len, 0, 63);
        ASSERT_EQ(::pwrite(fd, buf.get(), len, 0), static_cast<ssize_t>(len));
        ::close(fd);
    }
    const int fd = ::open(far, O_RDWR | O_DIRECT);
    ASSERT_GE(fd, 0) << far;
    phxfs_config c{};
    c.size = sizeof c;
    ASSERT_EQ(phxfs_get_config(&c), 0);
    const uint32_t mode = c.mode;
    c.mode = PHXFS_MODE_DIRECT;
    ASSERT_EQ(phxfs_set_config(&c), 0);
    std::memset(t, 0, len);
    errno = 0;
    EXPECT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, 0), -1);
    EXPECT_EQ(errno, EREMOTEIO);
    EXPECT_NE(std::string(phxfs_last_error()).find("P2P distance check"), std::string::npos)
        << phxfs_last_error();
    c.mode = PHXFS_MODE_AUTO;
    ASSERT_EQ(phxfs_set_config(&c), 0);
    ASSERT_EQ(phxfs_reset_stats(0), 0);
    EXPECT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, 0),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    EXPECT_EQ(first_mismatch(t, len, 0, 63), len);
    // And back: device memory to the disk's second MiB.
    EXPECT_EQ(phxfs_write({fd, 0}, reinterpret_cast<void *>(bar), 0, len, len),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    auto back = host_buffer(len);
    ASSERT_EQ(::pread(fd, back.get(), len, len), static_cast<ssize_t>(len));
    EXPECT_EQ(first_mismatch(back.get(), len, 0, 63), len);
    const phxfs_stats st = stats();
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes + st.path[PHXFS_PATH_DIRECT].write_bytes, 0u);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, len);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].write_bytes, len);
    EXPECT_EQ(st.fallbacks, 2u);
    ::close(fd);
    c.mode = mode;
    ASSERT_EQ(phxfs_set_config(&c), 0);
}

// phxfs-check tells the disks the distance check lets through (under the
// switch with the BAR) from the one it refuses (on the root bus).
TEST(Check, NamesTheDistanceVerdictPerDisk) {
    const char *far = std::getenv("PHXFS_GUEST_FAR_DISK");
    if (!p2pdma_pages() || !far || !*far)
        GTEST_SKIP() << "P2PDMA kernel with a disk across the root complex only";
    FILE *p = ::popen("phxfs-check 2>&1", "r");
    ASSERT_NE(p, nullptr);
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, p))
        out += buf;
    EXPECT_EQ(::pclose(p), 0) << out;
    // "nvmeN (bdf): relation" then "  P2PDMA: verdict", per controller.
    const std::string name = far + 5; // "/dev/nvme2n1": namespace 1 of controller nvme2
    const std::string ctrl = name.substr(0, name.rfind('n'));
    const size_t at = out.find("    " + ctrl + " (");
    ASSERT_NE(at, std::string::npos) << ctrl << " in\n" << out;
    const size_t verdict = out.find("P2PDMA: ", at);
    ASSERT_NE(verdict, std::string::npos) << out;
    const std::string line = out.substr(verdict, out.find('\n', verdict) - verdict);
    EXPECT_NE(line.find("passes only through a whitelisted host bridge"), std::string::npos)
        << line;
    EXPECT_NE(out.find("distance check passes (a bridge above both): direct"), std::string::npos)
        << out;
}

// #11 finding 10: compat mode is what the user asked for, not a fallback.
TEST_F(Guest, CompatModeCountsNoFallbacks) {
    phxfs_config c{};
    c.size = sizeof c;
    ASSERT_EQ(phxfs_get_config(&c), 0);
    const uint32_t mode = c.mode;
    c.mode = PHXFS_MODE_COMPAT;
    ASSERT_EQ(phxfs_set_config(&c), 0);
    auto [bar, disk] = ranges.take(1 << 20);
    reg(bar, 1 << 20);
    disk_pattern(disk, 1 << 20, 62);
    const int fd = ::open(disk_path(), O_RDONLY);
    EXPECT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, 1 << 20, disk), 1 << 20)
        << phxfs_last_error();
    ::close(fd);
    const phxfs_stats st = stats();
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, 1u << 20);
    EXPECT_EQ(st.fallbacks, 0u);
    c.mode = mode;
    ASSERT_EQ(phxfs_set_config(&c), 0);
}

// #11 finding 8: nodes a user cannot open are not devices of their own. The
// parent drops to nobody (root's 0600 nodes are closed to it) and runs this
// program again, so that discovery runs afresh in the child.
TEST(Discovery, UnopenableNodesAreNotPhantomDevices) {
    if (std::getenv("PHXFS_DISCOVERY_CHILD")) {
        ASSERT_EQ(phxfs_device_count(), 1) << "one pcibar device, the GPU node is none";
        phxfs_device_info info{};
        info.size = sizeof info;
        ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
        EXPECT_EQ(info.kind, PHXFS_DEVICE_PCIBAR);
        EXPECT_EQ(info.direct, 0);
        EXPECT_NE(std::string(info.why_not_direct).find("ermission denied"), std::string::npos)
            << info.why_not_direct;
        return;
    }
    if (::access("/dev/phxfs1", F_OK) != 0 || ::getuid() != 0)
        GTEST_SKIP() << "needs root and both nodes";
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::setenv("PHXFS_DISCOVERY_CHILD", "1", 1);
        if (::setgid(65534) == 0 && ::setuid(65534) == 0)
            ::execl("/proc/self/exe", "phxfs_guest_tests",
                    "--gtest_filter=Discovery.UnopenableNodesAreNotPhantomDevices",
                    static_cast<char *>(nullptr));
        _exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

} // namespace
