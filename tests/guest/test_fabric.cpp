// The direct path over NVMe over Fabrics (#15): tests/vm/fabric.sh exports
// the guest's own NVMe disks through the kernel target on its loopback and
// connects to them as a fabric host (nvme-tcp; nvme-rdma over soft-RoCE),
// then runs these tests, and a selection of test_direct.cpp's, against the
// fabric disks. Environment (set by fabric.sh; the tests skip without it):
//   PHXFS_GUEST_FABRIC  the transport: tcp or rdma
//   PHXFS_GUEST_DISK    the fabric namespace backed by the raw disk image
//   PHXFS_GUEST_FS      ext4 mounted from the fabric namespace of the fs disk
//   PHXFS_GUEST_FABRIC_COUNTER  a sysfs counter the transport moves
//                       (bytes on lo for tcp, rxe0's received packets)
//
// Who moves the bytes is not assumed: every byte is checked by the host
// against the disk image (HOSTCHECK), the transport's counter must have
// carried them, the fabric boot's QEMU trace must show no NVMe DMA inside
// the BAR (check.py: nvmet stages through its own buffers, so the only DMA
// master of the guest never reached the BAR), and each test says which pages the
// device has: phxfs.ko's GENERIC pages are served (the transport copies
// into them), the kernel's P2PDMA pages are refused by the fabric queue
// (EREMOTEIO), so auto mode bounces and direct mode fails with the reason.
#include "bar_fixture.hpp"
#include "engine/disk.hpp"

#include <cstdio>

using namespace phxtest;
using namespace phxguest;

namespace {

const char *fabric() {
    const char *f = std::getenv("PHXFS_GUEST_FABRIC");
    return f && *f ? f : nullptr;
}

// The transport's counter now; a test fails when it cannot be read.
int64_t transport_counter() {
    const char *c = std::getenv("PHXFS_GUEST_FABRIC_COUNTER");
    const int64_t v = c && *c ? read_number(c) : -1;
    if (v < 0)
        ADD_FAILURE() << "cannot read the transport counter " << (c ? c : "(unset)");
    return v;
}

// What the counter must have moved by at least for len bytes: tcp counts
// bytes on lo, soft-RoCE packets of at most 4 KiB of payload (dummy0 runs
// at MTU 9000, rxe at its 4 KiB IB MTU).
int64_t least_moved(uint64_t len) {
    return std::string(fabric()) == "tcp" ? static_cast<int64_t>(len)
                                          : static_cast<int64_t>(len / 4096);
}

class Fabric : public Guest {
  protected:
    void SetUp() override {
        if (!fabric() || !raw_disk())
            GTEST_SKIP() << "the fabric boot only (tests/vm/fabric.sh)";
        Guest::SetUp();
        up_ = true;
        p2p_ = p2pdma_pages();
    }
    void set_mode(uint32_t mode) {
        phxfs_config c{};
        c.size = sizeof c;
        ASSERT_EQ(phxfs_get_config(&c), 0);
        c.mode = mode;
        ASSERT_EQ(phxfs_set_config(&c), 0);
    }
    void TearDown() override {
        if (!up_)
            return; // skipped: nothing was opened
        set_mode(PHXFS_MODE_AUTO);
        Guest::TearDown();
    }
    // Prints what a test saw, for the closing report (check.py echoes it).
    void report(const char *what, uint64_t bytes, int64_t counter) const {
        std::printf("FABRIC %s %s pages: %s %llu bytes, transport counter +%lld\n", fabric(),
                    p2p_ ? "p2pdma" : "generic", what, static_cast<unsigned long long>(bytes),
                    static_cast<long long>(counter));
        std::fflush(stdout);
    }
    bool up_ = false, p2p_ = false;
};

// The disk under test is the fabric's, as the library sees it.
TEST_F(Fabric, TheDiskIsReachedOverTheFabric) {
    const int fd = ::open(raw_disk(), O_RDONLY);
    ASSERT_GE(fd, 0) << raw_disk();
    const phxfs::core::DiskInfo d = phxfs::core::disk_of_fd(fd);
    ::close(fd);
    EXPECT_EQ(d.transport, fabric()) << d.disk;
    EXPECT_TRUE(d.fabric());
    EXPECT_NE(d.address.find("traddr="), std::string::npos) << d.address;
}

// Aligned reads of every size from the fabric disk into the BAR, then the
// BAR back to the disk. GENERIC pages: all direct, none bounced. P2PDMA
// pages: each request refused by the fabric queue and bounced, counted.
TEST_F(Fabric, ReadsAndWritesReachDeviceMemoryAsThePagesAllow) {
    uint64_t total = 0, requests = 0;
    const int fd = ::open(raw_disk(), O_RDWR);
    ASSERT_GE(fd, 0);
    const int64_t before = transport_counter();
    for (uint64_t len : {4096ull, 65536ull, (1ull << 20) + 4096, 16ull << 20}) {
        auto [bar, disk] = ranges.take(len);
        disk_pattern(disk, len, 70);
        uint8_t *t = reg(bar, len);
        std::memset(t, 0, len);
        ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, disk),
                  static_cast<ssize_t>(len))
            << phxfs_last_error();
        EXPECT_EQ(first_mismatch_fast(t, len, disk, 70), len) << "len " << len;
        hostcheck_bar(bar, disk, len);
        total += len;
        ++requests;
    }
    const int64_t moved = transport_counter() - before;
    EXPECT_GE(moved, least_moved(total)) << "the fabric did not carry the reads";
    phxfs_stats st = stats();
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes, p2p_ ? 0 : total);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, p2p_ ? total : 0);
    EXPECT_EQ(st.fallbacks, p2p_ ? requests : 0);
    report("read", total, moved);

    ASSERT_EQ(phxfs_reset_stats(0), 0);
    const uint64_t len = 8 << 20;
    auto [bar, disk] = ranges.take(len);
    uint8_t *t = reg(bar, len);
    fill_pattern_fast(t, len, disk, 71);
    const int64_t before_write = transport_counter();
    ASSERT_EQ(phxfs_write({fd, 0}, reinterpret_cast<void *>(bar), 0, len, disk),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    ASSERT_EQ(::fsync(fd), 0);
    ::close(fd);
    const int64_t moved_write = transport_counter() - before_write;
    EXPECT_GE(moved_write, least_moved(len)) << "the fabric did not carry the write";
    hostcheck_bar(bar, disk, len);
    st = stats();
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].write_bytes, p2p_ ? 0 : len);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].write_bytes, p2p_ ? len : 0);
    EXPECT_EQ(st.fallbacks, p2p_ ? 1u : 0u);
    report("write", len, moved_write);
}

// The transport carried the bytes of an O_DIRECT read: TCP's go through
// the loopback interface, soft-RoCE's through rxe's packet counters.
TEST_F(Fabric, TheTransportCarriedTheBytes) {
    const int64_t before = transport_counter();
    const uint64_t len = 4 << 20;
    auto [bar, disk] = ranges.take(len);
    disk_pattern(disk, len, 72);
    reg(bar, len);
    const int fd = ::open(raw_disk(), O_RDONLY | O_DIRECT);
    ASSERT_GE(fd, 0) << raw_disk();
    ASSERT_EQ(phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, disk),
              static_cast<ssize_t>(len))
        << phxfs_last_error();
    ::close(fd);
    hostcheck_bar(bar, disk, len);
    const int64_t moved = transport_counter() - before;
    EXPECT_GE(moved, least_moved(len)) << "the fabric did not carry the read";
    report("read (counter)", len, moved);
}

// P2PDMA pages: the fabric queue refuses them whatever the distance. Direct
// mode fails with EREMOTEIO and names the transport; the trace says why.
TEST_F(Fabric, DirectModeOnP2PDMAPagesFailsWithTheFabricAsReason) {
    const uint64_t len = 1 << 20;
    auto [bar, disk] = ranges.take(len);
    disk_pattern(disk, len, 73);
    reg(bar, len);
    const int fd = ::open(raw_disk(), O_RDONLY | O_DIRECT);
    ASSERT_GE(fd, 0) << raw_disk();
    set_mode(PHXFS_MODE_DIRECT);
    errno = 0;
    const ssize_t got = phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, len, disk);
    const int err = errno;
    ::close(fd);
    if (!p2p_) { // GENERIC pages: the fabric serves them, direct mode too
        EXPECT_EQ(got, static_cast<ssize_t>(len)) << phxfs_last_error();
        hostcheck_bar(bar, disk, len);
        return;
    }
    EXPECT_EQ(got, -1);
    EXPECT_EQ(err, EREMOTEIO) << phxfs_last_error();
    const std::string msg = phxfs_last_error();
    std::printf("FABRIC %s p2pdma pages: direct mode: %s\n", fabric(), msg.c_str());
    EXPECT_NE(msg.find(std::string("NVMe-oF (nvme-") + fabric() + ")"), std::string::npos) << msg;
    EXPECT_NE(msg.find("P2PDMA"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("distance check"), std::string::npos) << msg;
}

// phxfs-check names the fabric of the disk a file lives on, lists the
// fabric controller, and predicts the path the pages allow.
TEST_F(Fabric, CheckNamesTheTransport) {
    const char *fs = std::getenv("PHXFS_GUEST_FS");
    const std::string path = fs && *fs ? fs : raw_disk();
    FILE *p = ::popen(("phxfs-check " + path + " 2>&1").c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, p))
        out += buf;
    EXPECT_EQ(::pclose(p), 0) << out;
    const std::string t = fabric();
    EXPECT_NE(out.find(", NVMe over " + t + " (traddr="), std::string::npos) << out;
    EXPECT_NE(out.find("over NVMe-oF (nvme-" + t + ")"), std::string::npos) << out;
    if (p2p_) {
        EXPECT_NE(out.find("would take: compat"), std::string::npos) << out;
        EXPECT_NE(out.find("queues take no P2PDMA pages"), std::string::npos) << out;
    } else if (fs && *fs) {
        EXPECT_NE(out.find("would take: direct"), std::string::npos) << out;
        EXPECT_NE(out.find("is reached over nvme-" + t), std::string::npos) << out;
    }
}

} // namespace
