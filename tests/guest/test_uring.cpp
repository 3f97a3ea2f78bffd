// io_uring on memory that phxfs_regmem mapped: the same DMA path as
// pread/pwrite, submitted asynchronously. Fixed buffers (register_buffers)
// over ZONE_DEVICE pages are refused by 6.1 (FOLL_LONGTERM) and accepted
// from 6.3 on; the test expects exactly that of the running kernel.
#include "guest.hpp"

#include <liburing.h>
#include <sys/utsname.h>

#include <cstdio>
#include <fstream>
#include <sys/wait.h>

using namespace phxtest;
using namespace phxguest;

namespace {

bool kernel_at_least(int major, int minor) {
    utsname u{};
    ::uname(&u);
    int ma = 0, mi = 0;
    std::sscanf(u.release, "%d.%d", &ma, &mi);
    return ma > major || (ma == major && mi >= minor);
}

class Uring : public ::testing::Test {
  protected:
    void SetUp() override {
        disk_ = raw_disk();
        if (!disk_)
            GTEST_SKIP() << "PHXFS_GUEST_DISK not set";
        ASSERT_EQ(phxfs_open(0), 0) << phxfs_last_error();
        // A BAR and disk range of its own (see run.sh for the layout).
        bar_ = env_u64("PHXFS_URING_BAR_OFF", 368ull << 20);
        disk_off_ = env_u64("PHXFS_URING_DISK_OFF", 600ull << 20);
        void *t = nullptr;
        ASSERT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(bar_), kLen, &t), 0)
            << phxfs_last_error();
        target_ = static_cast<uint8_t *>(t);
        ASSERT_EQ(io_uring_queue_init(8, &ring_, 0), 0);
        fd_ = ::open(disk_, O_RDWR | O_DIRECT);
        ASSERT_GE(fd_, 0);
        disk_pattern(disk_off_, kLen, 60);
    }
    void TearDown() override {
        if (fd_ >= 0)
            ::close(fd_);
        if (target_) {
            io_uring_queue_exit(&ring_);
            EXPECT_EQ(phxfs_deregmem(0, reinterpret_cast<void *>(bar_), kLen), 0);
            EXPECT_EQ(phxfs_close(0), 0);
        }
    }
    int submit_wait(io_uring_sqe *sqe) {
        (void)sqe;
        EXPECT_EQ(io_uring_submit(&ring_), 1);
        io_uring_cqe *cqe = nullptr;
        EXPECT_EQ(io_uring_wait_cqe(&ring_, &cqe), 0);
        const int res = cqe->res;
        io_uring_cqe_seen(&ring_, cqe);
        return res;
    }
    static constexpr uint64_t kLen = 4 << 20;
    const char *disk_ = nullptr;
    uint64_t bar_ = 0, disk_off_ = 0;
    uint8_t *target_ = nullptr;
    io_uring ring_{};
    int fd_ = -1;
};

TEST_F(Uring, ReadIntoDeviceMemory) {
    io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
    io_uring_prep_read(sqe, fd_, target_, kLen, disk_off_);
    ASSERT_EQ(submit_wait(sqe), static_cast<int>(kLen));
    EXPECT_EQ(first_mismatch(target_, 4096, disk_off_, 60), 4096u);
    hostcheck_bar(bar_, disk_off_, kLen);
}

TEST_F(Uring, FixedBuffersDependOnTheKernel) {
    iovec iov{target_, kLen};
    const int ret = io_uring_register_buffers(&ring_, &iov, 1);
    if (p2pdma_pages()) {
        EXPECT_LT(ret, 0) << "P2PDMA pages are never long-term pinned";
        return;
    }
    if (!kernel_at_least(6, 3)) {
        EXPECT_EQ(ret, -EOPNOTSUPP) << "6.1 refuses long-term pins of ZONE_DEVICE pages";
        return;
    }
    ASSERT_EQ(ret, 0) << strerror(-ret);
    fill_pattern_fast(target_, kLen, disk_off_, 61);
    io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
    io_uring_prep_write_fixed(sqe, fd_, target_, kLen, disk_off_, 0);
    ASSERT_EQ(submit_wait(sqe), static_cast<int>(kLen));
    sqe = io_uring_get_sqe(&ring_);
    std::memset(target_, 0, 4096);
    io_uring_prep_read_fixed(sqe, fd_, target_, kLen, disk_off_, 0);
    ASSERT_EQ(submit_wait(sqe), static_cast<int>(kLen));
    EXPECT_EQ(first_mismatch(target_, 4096, disk_off_, 61), 4096u);
    EXPECT_EQ(io_uring_unregister_buffers(&ring_), 0);
    hostcheck_bar(bar_, disk_off_, kLen);
}

// A process that dies with device memory registered as io_uring fixed
// buffers: its mappings go at exit before its files, so the pages are still
// pinned by the ring when phxfs tears the mapping down. Exit must not wait
// for that, and the pins must be gone once the ring is.
TEST(UringExit, ExitWithFixedBuffersRegistered) {
    if (!kernel_at_least(6, 3) || p2pdma_pages())
        GTEST_SKIP() << "fixed buffers over device memory need 6.3+ and GENERIC pages";
    const pid_t pid = ::fork();
    if (pid == 0) {
        void *t = nullptr;
        io_uring ring{};
        if (phxfs_open(0) || phxfs_regmem(0, reinterpret_cast<void *>(372ull << 20), 1 << 20, &t) ||
            io_uring_queue_init(4, &ring, 0))
            _exit(3);
        iovec iov{t, 1 << 20};
        _exit(io_uring_register_buffers(&ring, &iov, 1) == 0 ? 0 : 4); // no cleanup
    }
    int status = -1;
    for (int i = 0; i < 100 && ::waitpid(pid, &status, WNOHANG) == 0; ++i)
        ::usleep(50000);
    ASSERT_TRUE(WIFEXITED(status)) << "the process did not exit within 5 s";
    EXPECT_EQ(WEXITSTATUS(status), 0);
    std::string busy;
    for (int i = 0; i < 50; ++i) {
        std::ifstream("/sys/class/phxfs/phxfs0/pages_busy") >> busy;
        if (busy == "0")
            break;
        ::usleep(100000);
    }
    EXPECT_EQ(busy, "0") << "pages still pinned after the ring went away";
}

} // namespace
