// Failures injected where libphxfs meets the kernel and the GPU (src/core/fault.hpp):
// every one surfaces as a clear error with its errno, nothing hangs, no
// staging memory is lost, a failed write is never reported complete, and a
// registration never waits behind I/O on other memory.
#include "core/fault.hpp"
#include "testutil.hpp"

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

using namespace phxtest;
namespace fault = phxfs::core::fault;
using fault::Site;

namespace {

constexpr size_t kChunk = 64 << 10;
constexpr size_t kFile = 4 << 20; // 64 chunks: every participant takes several

phxfs_stats stats0() {
    phxfs_stats s{};
    s.size = sizeof s;
    EXPECT_EQ(phxfs_get_stats(0, &s), 0);
    return s;
}

// What phxfs_last_error() said on the thread of the last within().
std::string last_error_;
const char *last_error() {
    return last_error_.c_str();
}

// Runs the library call fn on another thread and aborts (instead of hanging
// the suite) when it does not return within `limit`. errno and the last
// error are per thread: they are carried back to this one.
template <typename Fn> ssize_t within(std::chrono::seconds limit, Fn fn) {
    struct Result {
        ssize_t ret;
        int err;
        std::string msg;
    };
    auto f = std::async(std::launch::async, [&] {
        errno = 0;
        const ssize_t r = fn();
        return Result{r, errno, phxfs_last_error()};
    });
    if (f.wait_for(limit) != std::future_status::ready) {
        ADD_FAILURE() << "did not return within " << limit.count() << " s";
        std::abort(); // a hang: nothing sensible is left to test
    }
    Result r = f.get();
    errno = r.err;
    last_error_ = r.msg;
    return r.ret;
}

class Faults : public DeviceTest {
  protected:
    void SetUp() override {
        DeviceTest::SetUp();
        small_chunks(4, kChunk);
        path_ = pattern_file("data", kFile);
    }
    void TearDown() override {
        fault::disarm();
        // Every lane came back: the pool holds at most its budget, and a
        // request that needs every lane at once still gets them.
        EXPECT_LE(stats0().staging_bytes, 2 * kChunk * 4);
        DeviceTest::TearDown();
    }
    int open_file(int flags) {
        const int fd = ::open(path_.c_str(), flags);
        EXPECT_GE(fd, 0) << path_;
        return fd;
    }
    ssize_t read_all(int fd, uint8_t *buf, size_t n = kFile, off_t off = 0) {
        return within(std::chrono::seconds(30), [&] {
            return phxfs_read({fd, 0}, buf, 0, n, off);
        });
    }
    ssize_t write_all(int fd, const uint8_t *buf, size_t n = kFile, off_t off = 0) {
        return within(std::chrono::seconds(30), [&] {
            return phxfs_write({fd, 0}, buf, 0, n, off);
        });
    }
    std::string path_;
};

TEST_F(Faults, InterruptedAndShortReadsAreResumed) {
    for (int flags : {O_RDONLY, O_RDONLY | O_DIRECT}) {
        const int fd = open_file(flags);
        auto buf = host_buffer(kFile);
        fault::arm(Site::pread, {.err = EINTR}, 3, 5);
        ASSERT_EQ(read_all(fd, buf.get()), static_cast<ssize_t>(kFile)) << last_error();
        EXPECT_EQ(fault::hits(Site::pread), 5u);
        EXPECT_EQ(first_mismatch_fast(buf.get(), kFile, 0), kFile);

        std::memset(buf.get(), 0, kFile);
        fault::arm(Site::pread, {.max_bytes = 4096 + 512}, 0, 40);
        ASSERT_EQ(read_all(fd, buf.get()), static_cast<ssize_t>(kFile)) << last_error();
        EXPECT_EQ(first_mismatch_fast(buf.get(), kFile, 0), kFile);
        ::close(fd);
    }
}

TEST_F(Faults, ReadErrorsSurfaceWithTheirErrno) {
    for (int err : {EIO, EAGAIN, ENOMEM}) {
        for (int flags : {O_RDONLY, O_RDONLY | O_DIRECT}) {
            const int fd = open_file(flags);
            auto buf = host_buffer(kFile);
            fault::arm(Site::pread, {.err = err}, 7, 1); // mid-request
            errno = 0;
            EXPECT_EQ(read_all(fd, buf.get()), -1);
            EXPECT_EQ(errno, err) << last_error();
            EXPECT_NE(std::string(last_error()).find("pread at offset"), std::string::npos)
                << last_error();
            // The next request runs normally.
            ASSERT_EQ(read_all(fd, buf.get()), static_cast<ssize_t>(kFile)) << last_error();
            EXPECT_EQ(first_mismatch_fast(buf.get(), kFile, 0), kFile);
            ::close(fd);
        }
    }
}

TEST_F(Faults, FailedWritesAreNeverReportedComplete) {
    auto src = host_buffer(kFile);
    fill_pattern_fast(src.get(), kFile, 0, 9);
    for (int err : {ENOSPC, EIO, EDQUOT}) {
        for (int flags : {O_WRONLY, O_WRONLY | O_DIRECT}) {
            const int fd = open_file(flags);
            fault::arm(Site::pwrite, {.err = err}, 5, 1);
            errno = 0;
            EXPECT_EQ(write_all(fd, src.get()), -1);
            EXPECT_EQ(errno, err) << last_error();
            EXPECT_NE(std::string(last_error()).find("pwrite at offset"), std::string::npos);
            ::close(fd);
        }
    }
    // Short writes are resumed to the last byte, unaligned edges included.
    const int fd = open_file(O_RDWR | O_DIRECT);
    fault::arm(Site::pwrite, {.max_bytes = 1000}, 0, 0);
    ASSERT_EQ(write_all(fd, src.get() + 100, kFile - 300, 100), static_cast<ssize_t>(kFile - 300))
        << last_error();
    fault::disarm();
    auto back = host_buffer(kFile);
    ASSERT_EQ(read_all(fd, back.get()), static_cast<ssize_t>(kFile));
    EXPECT_EQ(first_mismatch_fast(back.get() + 100, kFile - 300, 100, 9), kFile - 300);
    ::close(fd);
}

TEST_F(Faults, StagingAndStreamFailuresAreClearAndLoseNoLane) {
    // Reopen the device so that no lane exists yet: every lane is made.
    for (Site site : {Site::staging_alloc, Site::stream_create}) {
        ASSERT_EQ(phxfs_close(0), 0);
        ASSERT_EQ(phxfs_open(0), 0);
        EXPECT_EQ(stats0().staging_bytes, 0u);
        const int fd = open_file(O_RDONLY);
        auto buf = host_buffer(kFile);
        // No lane can be made: the request fails, naming the cause; workers
        // already queued finish before the call returns (ASan's
        // detect_stack_use_after_return would see them otherwise).
        fault::arm(site, {.err = ENOMEM}, 0, 0);
        errno = 0;
        EXPECT_EQ(read_all(fd, buf.get()), -1);
        EXPECT_EQ(errno, ENOMEM);
        EXPECT_NE(std::string(last_error()).find("(injected)"), std::string::npos) << last_error();
        // Only the first lane can be made, whoever asked for it: the request
        // goes on with that one (the others wait for it or leave).
        fault::arm(Site::pread, {.delay_ms = 1}, 0, 0); // so that workers join
        fault::arm(site, {.err = ENOMEM}, 1, 0);
        ASSERT_EQ(read_all(fd, buf.get()), static_cast<ssize_t>(kFile)) << last_error();
        EXPECT_EQ(first_mismatch_fast(buf.get(), kFile, 0), kFile);
        fault::disarm();
        ::close(fd);
    }
}

TEST_F(Faults, CopyFailuresSurface) {
    const int fd = open_file(O_RDWR);
    auto buf = host_buffer(kFile);
    fault::arm(Site::copy, {.err = EIO}, 9, 1);
    errno = 0;
    EXPECT_EQ(read_all(fd, buf.get()), -1);
    EXPECT_EQ(errno, EIO);
    fault::arm(Site::copy, {.err = EIO}, 9, 1);
    errno = 0;
    EXPECT_EQ(write_all(fd, buf.get()), -1);
    EXPECT_EQ(errno, EIO);
    EXPECT_NE(std::string(last_error()).find("copy from the buffer"), std::string::npos);
    ::close(fd);
}

// The twin (the file reopened through /proc/self/fd) cannot be opened: no
// /proc in a container, or EACCES after a privilege drop.
TEST_F(Faults, ReadsNeverNeedTheTwin) {
    fault::arm(Site::reopen, {.err = EACCES}, 0, 0);
    const int fd = open_file(O_RDONLY | O_DIRECT);
    auto buf = host_buffer(kFile);
    // Unaligned at both ends: whole blocks through the caller's O_DIRECT fd.
    ASSERT_EQ(read_all(fd, buf.get(), kFile - 1000, 333), static_cast<ssize_t>(kFile - 1000))
        << last_error();
    EXPECT_EQ(first_mismatch_fast(buf.get(), kFile - 1000, 333), kFile - 1000);
    ASSERT_EQ(read_all(fd, buf.get(), 100, 4000), 100) << last_error();
    EXPECT_EQ(first_mismatch(buf.get(), 100, 4000), 100u);
    EXPECT_EQ(fault::hits(Site::reopen), 0u);
    ::close(fd);
}

TEST_F(Faults, WritesWithoutTheTwinFailBeforeWritingAnything) {
    fault::arm(Site::reopen, {.err = EACCES}, 0, 0);
    const int fd = open_file(O_RDWR | O_DIRECT);
    auto src = host_buffer(kFile);
    fill_pattern_fast(src.get(), kFile, 0, 5);
    // Whole blocks need only the caller's fd.
    ASSERT_EQ(write_all(fd, src.get(), 2 * kChunk, kChunk), static_cast<ssize_t>(2 * kChunk))
        << last_error();
    // An unaligned head needs the buffered twin: a clear EINVAL, and the
    // file is untouched.
    errno = 0;
    EXPECT_EQ(write_all(fd, src.get(), kFile - 4096 - 10, 10), -1);
    EXPECT_EQ(errno, EINVAL);
    const std::string msg = last_error();
    EXPECT_NE(msg.find("without O_DIRECT"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Permission denied"), std::string::npos) << msg;
    fault::disarm();
    auto back = host_buffer(kFile);
    ASSERT_EQ(read_all(fd, back.get()), static_cast<ssize_t>(kFile));
    EXPECT_EQ(first_mismatch_fast(back.get(), kChunk, 0), kChunk);
    EXPECT_EQ(first_mismatch_fast(back.get() + kChunk, 2 * kChunk, 0, 5), 2 * kChunk);
    EXPECT_EQ(first_mismatch_fast(back.get() + 3 * kChunk, kFile - 3 * kChunk, 3 * kChunk),
              kFile - 3 * kChunk);
    ::close(fd);
}

// Finding 9: regmem/deregmem of other memory complete while a request is in
// flight; deregmem of the memory a request uses waits for that request only.
TEST_F(Faults, RegistrationsDoNotWaitForOtherRequests) {
    const int fd = open_file(O_RDONLY);
    auto buf = host_buffer(kChunk);
    auto other = host_buffer(kChunk);
    void *target = nullptr;
    ASSERT_EQ(phxfs_regmem(0, buf.get(), kChunk, &target), 0) << phxfs_last_error();

    // The read stays in flight for 3 s; registering and deregistering other
    // memory takes milliseconds, so finishing within 2 s (a loaded CI
    // machine's margin) means they did not wait for it.
    fault::arm(Site::pread, {.delay_ms = 3000}, 0, 1);
    std::atomic<bool> read_done{false};
    std::thread reader([&] {
        EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, kChunk, 0), static_cast<ssize_t>(kChunk));
        read_done = true;
    });
    while (fault::hits(Site::pread) == 0)
        std::this_thread::yield();

    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(phxfs_regmem(0, other.get(), kChunk, &target), 0) << phxfs_last_error();
    ASSERT_EQ(phxfs_deregmem(0, other.get(), kChunk), 0) << phxfs_last_error();
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(took, std::chrono::milliseconds(2000));
    EXPECT_FALSE(read_done.load());

    // The registration in use: deregmem returns only once the read has put
    // every byte in place (its use ends just before phxfs_read returns).
    ASSERT_EQ(phxfs_deregmem(0, buf.get(), kChunk), 0) << phxfs_last_error();
    EXPECT_EQ(first_mismatch(buf.get(), kChunk, 0), kChunk);
    reader.join();
    EXPECT_TRUE(read_done.load());
    ::close(fd);
}

TEST_F(Faults, LoweringTheStagingBudgetGivesMemoryBack) {
    const int fd = open_file(O_RDONLY);
    auto buf = host_buffer(kFile);
    fault::arm(Site::pread, {.delay_ms = 2}, 0, 0); // slow reads: every worker joins
    ASSERT_EQ(read_all(fd, buf.get()), static_cast<ssize_t>(kFile));
    fault::disarm();
    const uint64_t held = stats0().staging_bytes;
    EXPECT_GT(held, 2 * kChunk); // several lanes ran
    phxfs_config c{};
    c.size = sizeof c;
    ASSERT_EQ(phxfs_get_config(&c), 0);
    c.staging_bytes = 2 * kChunk; // one lane
    ASSERT_EQ(phxfs_set_config(&c), 0);
    EXPECT_LE(stats0().staging_bytes, 2 * kChunk);
    ASSERT_EQ(read_all(fd, buf.get()), static_cast<ssize_t>(kFile));
    EXPECT_LE(stats0().staging_bytes, 2 * kChunk);
    ASSERT_EQ(phxfs_close(0), 0);
    EXPECT_EQ(stats0().staging_bytes, 0u); // the device's memory goes with its last close
    ASSERT_EQ(phxfs_open(0), 0);
    ::close(fd);
}

} // namespace

namespace {

// Review finding: making a lane fails while the only other staging is an
// idle lane of another size (the chunk size changed): the request fails
// with ENOMEM instead of waiting for a lane no one will return.
TEST_F(Faults, NoLaneToWaitForMeansFailNotWait) {
    const int fd = open_file(O_RDONLY);
    auto buf = host_buffer(kFile);
    ASSERT_EQ(read_all(fd, buf.get(), 4096, 0), 4096); // one 64 KiB lane, idle now
    phxfs_config c{};
    c.size = sizeof c;
    ASSERT_EQ(phxfs_get_config(&c), 0);
    c.chunk_bytes = 2 * kChunk; // lanes of another size; the same budget
    ASSERT_EQ(phxfs_set_config(&c), 0);
    fault::arm(Site::staging_alloc, {.err = ENOMEM}, 0, 0);
    errno = 0;
    EXPECT_EQ(read_all(fd, buf.get(), 4096, 0), -1);
    EXPECT_EQ(errno, ENOMEM);
    // The idle lane was given back for the retry.
    EXPECT_EQ(stats0().staging_bytes, 0u);
    fault::disarm();
    ASSERT_EQ(read_all(fd, buf.get(), 4096, 0), 4096) << last_error();
    ::close(fd);
}

// Review finding: deregmem of memory a request uses waits for that request
// without holding anything that regmem of other memory needs.
TEST_F(Faults, PendingDeregmemDoesNotBlockOtherRegistrations) {
    const int fd = open_file(O_RDONLY);
    auto a = host_buffer(kChunk), b = host_buffer(kChunk);
    void *t = nullptr;
    ASSERT_EQ(phxfs_regmem(0, a.get(), kChunk, &t), 0) << phxfs_last_error();
    fault::arm(Site::pread, {.delay_ms = 3000}, 0, 1);
    std::thread reader([&] { phxfs_read({fd, 0}, a.get(), 0, kChunk, 0); });
    while (fault::hits(Site::pread) == 0)
        std::this_thread::yield();
    std::thread dereg([&] { EXPECT_EQ(phxfs_deregmem(0, a.get(), kChunk), 0); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100)); // deregmem is waiting
    const auto t0 = std::chrono::steady_clock::now();
    // An overlapping registration is refused while the old one goes...
    EXPECT_EQ(phxfs_regmem(0, a.get(), kChunk, &t), -1);
    EXPECT_EQ(errno, EEXIST);
    // ...and any other memory registers at once.
    ASSERT_EQ(phxfs_regmem(0, b.get(), kChunk, &t), 0) << phxfs_last_error();
    ASSERT_EQ(phxfs_deregmem(0, b.get(), kChunk), 0) << phxfs_last_error();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(2000));
    reader.join();
    dereg.join();
    ::close(fd);
}

// A file whose direct I/O takes blocks larger than the compat engine's 4 KiB
// (16 KiB sectors, XFS realtime extents): everything goes through the file
// without O_DIRECT, and where that cannot be opened the request fails before
// moving a byte.
TEST_F(Faults, FilesWithLargerDirectBlocksUseTheTwinOrFailWhole) {
    fault::arm(Site::dio_align, {.max_bytes = 16384}, 0, 0);
    const int fd = open_file(O_RDWR | O_DIRECT);
    auto src = host_buffer(kFile);
    fill_pattern_fast(src.get(), kFile - 8192, 4096, 7);
    ASSERT_EQ(write_all(fd, src.get(), kFile - 8192, 4096), static_cast<ssize_t>(kFile - 8192))
        << last_error();
    auto back = host_buffer(kFile);
    ASSERT_EQ(read_all(fd, back.get(), kFile - 8192, 4096), static_cast<ssize_t>(kFile - 8192))
        << last_error();
    EXPECT_EQ(first_mismatch_fast(back.get(), kFile - 8192, 4096, 7), kFile - 8192);
    ::close(fd);

    fault::arm(Site::reopen, {.err = EACCES}, 0, 0);
    const int fd2 = open_file(O_RDWR | O_DIRECT);
    auto zero = host_buffer(kFile, 0);
    errno = 0;
    EXPECT_EQ(write_all(fd2, zero.get(), kFile, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_NE(std::string(last_error()).find("16384-byte direct-I/O blocks"), std::string::npos)
        << last_error();
    EXPECT_EQ(read_all(fd2, back.get(), 4096, 0), -1);
    fault::disarm();
    ASSERT_EQ(read_all(fd2, back.get(), kFile - 8192, 4096), static_cast<ssize_t>(kFile - 8192));
    EXPECT_EQ(first_mismatch_fast(back.get(), kFile - 8192, 4096, 7), kFile - 8192)
        << "the refused write changed the file";
    ::close(fd2);
}

} // namespace
