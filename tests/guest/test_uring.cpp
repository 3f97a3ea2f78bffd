// io_uring on memory that phxfs_regmem mapped: the same DMA path as
// pread/pwrite, submitted asynchronously. Fixed buffers (register_buffers)
// over ZONE_DEVICE pages are refused by 6.1 (FOLL_LONGTERM) and accepted
// from 6.3 on; the test expects exactly that of the running kernel. And the
// library's own ring: a batch's small direct requests run through it.
#include "guest.hpp"

#include <liburing.h>
#include <sys/utsname.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <regex>
#include <sstream>
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

// #12: a batch's small requests that go direct whole run through the
// library's io_uring ring together. 512 reads of 4 and 8 KiB from shuffled
// places of the disk into slots of two BAR registrations, one request
// outside every registration among them, then 256 of the slots written back
// to shuffled places elsewhere on the disk. The bad request fails alone
// (EFAULT); the path trace says io_uring for every other one; the counters
// say direct for every byte and nothing went through staging; the host
// compares each range with the disk image.
TEST(UringBatch, SmallDirectRequestsRunThroughTheRing) {
    const char *disk = raw_disk();
    if (!disk)
        GTEST_SKIP() << "PHXFS_GUEST_DISK not set";
    constexpr uint64_t kBar = 376ull << 20, kRegLen = 2 << 20, kBadBar = 390ull << 20;
    constexpr uint64_t kReadFrom = 400ull << 20, kWriteTo = 420ull << 20, kSlot = 8192;
    constexpr size_t kReads = 512, kWrites = 256;
    static_assert(kReads * kSlot == 2 * kRegLen);
    disk_pattern(kReadFrom, kReads * kSlot, 90);
    ASSERT_EQ(phxfs_open(0), 0) << phxfs_last_error();
    uint8_t *mapped[2] = {};
    for (int r = 0; r < 2; ++r) {
        void *t = nullptr;
        ASSERT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(kBar + r * kRegLen), kRegLen, &t), 0)
            << phxfs_last_error();
        mapped[r] = static_cast<uint8_t *>(t);
    }
    ASSERT_EQ(phxfs_reset_stats(0), 0);
    const int fd = ::open(disk, O_RDWR); // the library opens its O_DIRECT twin
    ASSERT_GE(fd, 0);
    phxfs_file_t fh = nullptr;
    ASSERT_EQ(phxfs_file_open(&fh, 0, fd), 0) << phxfs_last_error();
    phxfs_batch_t b = nullptr;
    ASSERT_EQ(phxfs_batch_create(&b, 1024), 0) << phxfs_last_error();

    // The path trace, into a file in place of standard error.
    phxfs_config saved{};
    saved.size = sizeof saved;
    ASSERT_EQ(phxfs_get_config(&saved), 0);
    phxfs_config c = saved;
    c.trace = 1;
    ASSERT_EQ(phxfs_set_config(&c), 0);
    const char *trace_path = "/tmp/uring-batch.trace";
    const int trace_fd = ::open(trace_path, O_CREAT | O_TRUNC | O_RDWR, 0644);
    ASSERT_GE(trace_fd, 0);
    const int stderr_fd = ::dup(2);
    ::dup2(trace_fd, 2);

    std::mt19937 rng(91);
    std::vector<uint64_t> from(kReads), to(kWrites), len(kReads);
    std::iota(from.begin(), from.end(), 0);
    std::shuffle(from.begin(), from.end(), rng);
    std::iota(to.begin(), to.end(), 0);
    std::shuffle(to.begin(), to.end(), rng);
    for (auto &n : len)
        n = rng() % 2 ? 8192 : 4096;
    constexpr uint64_t kBad = UINT64_MAX;
    auto run = [&](std::vector<phxfs_io> &ios) {
        std::shuffle(ios.begin(), ios.end(), rng);
        ASSERT_EQ(phxfs_batch_submit(b, ios.data(), ios.size()), static_cast<int>(ios.size()))
            << phxfs_last_error();
        std::vector<phxfs_completion> cs(ios.size());
        for (size_t got = 0; got < ios.size();) {
            const int r = phxfs_batch_reap(b, cs.data() + got, 1, ios.size() - got, -1);
            ASSERT_GT(r, 0) << phxfs_last_error();
            got += r;
        }
        for (const phxfs_completion &x : cs) {
            const auto i = reinterpret_cast<uintptr_t>(x.user_data);
            if (i == kBad) {
                EXPECT_EQ(x.status, PHXFS_IO_FAILED);
                EXPECT_EQ(x.result, -EFAULT) << x.error;
                EXPECT_NE(std::string(x.error).find("not inside a registration"), std::string::npos)
                    << x.error;
                continue;
            }
            EXPECT_EQ(x.status, PHXFS_IO_DONE) << i << ": " << x.error;
            EXPECT_EQ(x.result, static_cast<int64_t>(len[i])) << i << ": " << x.error;
        }
    };
    std::vector<phxfs_io> reads;
    for (size_t i = 0; i < kReads; ++i)
        reads.push_back({fh, PHXFS_OP_READ, 0, reinterpret_cast<void *>(kBar), i * kSlot, len[i],
                         kReadFrom + from[i] * kSlot, reinterpret_cast<void *>(i)});
    reads.push_back({fh, PHXFS_OP_READ, 0, reinterpret_cast<void *>(kBadBar), 0, 4096, kReadFrom,
                     reinterpret_cast<void *>(kBad)});
    const auto t0 = std::chrono::steady_clock::now();
    run(reads);
    const auto t1 = std::chrono::steady_clock::now();
    std::vector<phxfs_io> writes;
    for (size_t i = 0; i < kWrites; ++i)
        writes.push_back({fh, PHXFS_OP_WRITE, 0, reinterpret_cast<void *>(kBar), i * kSlot, len[i],
                          kWriteTo + to[i] * kSlot, reinterpret_cast<void *>(i)});
    run(writes);
    const auto t2 = std::chrono::steady_clock::now();
    auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
    std::printf("batch of %zu reads: %.1f ms, of %zu writes: %.1f ms (TCG)\n", reads.size(),
                ms(t1 - t0), writes.size(), ms(t2 - t1));

    ::dup2(stderr_fd, 2);
    ::close(stderr_fd);
    ASSERT_EQ(phxfs_set_config(&saved), 0);
    std::ifstream in(trace_path);
    std::stringstream all;
    all << in.rdbuf();
    const std::string trace = all.str();
    const std::regex ring_line(R"((read|write) dev 0 fd \d+ (\d+) B at \d+: direct (\d+) B )"
                               R"(\(io_uring\), \d+ us)");
    size_t ring_reads = 0, ring_writes = 0, failed = 0, lines = 0;
    std::istringstream ls(trace);
    for (std::string line; std::getline(ls, line); ++lines) {
        std::smatch m;
        if (std::regex_search(line, m, ring_line) && m[2] == m[3])
            ++(m[1] == "read" ? ring_reads : ring_writes);
        else if (line.find("failed:") != std::string::npos)
            ++failed;
        else
            ADD_FAILURE() << "not through io_uring: " << line;
    }
    EXPECT_EQ(ring_reads, kReads) << trace.substr(0, 2000);
    EXPECT_EQ(ring_writes, kWrites);
    EXPECT_EQ(failed, 1u);
    EXPECT_EQ(lines, kReads + kWrites + 1);

    phxfs_stats st{};
    st.size = sizeof st;
    ASSERT_EQ(phxfs_get_stats(0, &st), 0);
    const uint64_t read_bytes = std::accumulate(len.begin(), len.end(), uint64_t{0});
    const uint64_t write_bytes = std::accumulate(len.begin(), len.begin() + kWrites, uint64_t{0});
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes, read_bytes);
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_calls, kReads);
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].write_bytes, write_bytes);
    EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].write_calls, kWrites);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes + st.path[PHXFS_PATH_COMPAT].write_bytes, 0u);
    EXPECT_EQ(st.fallbacks, 0u);
    EXPECT_EQ(st.errors, 1u);
    EXPECT_EQ(st.staging_bytes, 0u) << "nothing went through staging";

    // The CPU's look at a few slots; the host checks every range.
    for (size_t i : {size_t{0}, kReads / 2 - 1, kReads / 2, kReads - 1}) {
        const uint8_t *slot = mapped[i * kSlot / kRegLen] + i * kSlot % kRegLen;
        EXPECT_EQ(first_mismatch(slot, len[i], kReadFrom + from[i] * kSlot, 90), len[i]) << i;
    }
    for (size_t i = 0; i < kReads; ++i)
        hostcheck_bar(kBar + i * kSlot, kReadFrom + from[i] * kSlot, len[i]);
    for (size_t i = 0; i < kWrites; ++i)
        hostcheck_bar(kBar + i * kSlot, kWriteTo + to[i] * kSlot, len[i]);

    EXPECT_EQ(phxfs_batch_destroy(b), 0);
    EXPECT_EQ(phxfs_file_close(fh), 0);
    ::close(fd);
    ::close(trace_fd);
    for (int r = 0; r < 2; ++r)
        EXPECT_EQ(phxfs_deregmem(0, reinterpret_cast<void *>(kBar + r * kRegLen), kRegLen), 0);
    EXPECT_EQ(phxfs_close(0), 0);
}

} // namespace
