// Futures and batches with requests held in flight on purpose (a delayed
// pread, src/core/fault.hpp): timeouts, cancelling, and closing a handle or
// destroying a batch while requests run.
#include "core/fault.hpp"
#include "testutil.hpp"

#include <phxfs/phxfs.hpp>

#include <atomic>
#include <chrono>
#include <thread>

using namespace phxtest;
using namespace std::chrono_literals;
namespace fault = phxfs::core::fault;
using fault::Site;
using Clock = std::chrono::steady_clock;

namespace {

class AsyncFaults : public DeviceTest {
  protected:
    void SetUp() override {
        DeviceTest::SetUp();
        small_chunks(1, 64 << 10); // one participant: requests run one by one
        path_ = pattern_file("data", 1 << 20);
        fd_ = ::open(path_.c_str(), O_RDONLY);
        ASSERT_EQ(phxfs_file_open(&fh_, 0, fd_), 0) << phxfs_last_error();
    }
    void TearDown() override {
        fault::disarm();
        if (fh_)
            phxfs_file_close(fh_);
        ::close(fd_);
        DeviceTest::TearDown();
    }
    // The next pread sleeps for ms first.
    static void delay_next_pread(unsigned ms) { fault::arm(Site::pread, {.delay_ms = ms}, 0, 1); }
    std::string path_;
    int fd_ = -1;
    phxfs_file_t fh_ = nullptr;
};

TEST_F(AsyncFaults, FutureWaitTimesOutWhileTheRequestRuns) {
    delay_next_pread(300);
    auto buf = host_buffer(4096);
    phxfs_future_t f = nullptr;
    ASSERT_EQ(phxfs_file_read_async(fh_, buf.get(), 0, 4096, 0, &f), 0);
    errno = 0;
    EXPECT_EQ(phxfs_future_wait(f, 10'000'000), -1);
    EXPECT_EQ(errno, ETIMEDOUT);
    EXPECT_EQ(phxfs_future_poll(f), 0);
    EXPECT_EQ(phxfs_future_wait(f, -1), 4096) << phxfs_last_error();
    EXPECT_EQ(first_mismatch(buf.get(), 4096, 0), 4096u);
    phxfs_future_free(f);
}

// The caller may close the fd once phxfs_file_close returns: the requests
// using the handle have completed by then.
TEST_F(AsyncFaults, CloseWaitsForRunningRequests) {
    delay_next_pread(300);
    auto buf = host_buffer(4096);
    phxfs_future_t f = nullptr;
    ASSERT_EQ(phxfs_file_read_async(fh_, buf.get(), 0, 4096, 0, &f), 0);
    for (auto t0 = Clock::now(); fault::hits(Site::pread) == 0 && Clock::now() - t0 < 5s;)
        std::this_thread::sleep_for(1ms); // until the request is in pread
    ASSERT_EQ(fault::hits(Site::pread), 1u);
    ASSERT_EQ(phxfs_file_close(fh_), 0);
    fh_ = nullptr;
    EXPECT_EQ(phxfs_future_poll(f), 1) << "close returned before the request completed";
    EXPECT_EQ(phxfs_future_wait(f, 0), 4096) << phxfs_last_error();
    phxfs_future_free(f);
}

// A call holds its handle from the moment it finds it in the table: a close
// that comes after the lookup, before the call's I/O, waits for the call.
TEST_F(AsyncFaults, CloseWaitsForACallThatHasFoundItsHandle) {
    fault::arm(Site::handle_use, {.delay_ms = 300}, 0, 1);
    auto buf = host_buffer(4096);
    std::atomic<bool> returned{false};
    ssize_t got = -2;
    std::thread reader([&] {
        got = phxfs_file_read(fh_, buf.get(), 0, 4096, 0);
        returned = true;
    });
    for (auto t0 = Clock::now(); fault::hits(Site::handle_use) == 0 && Clock::now() - t0 < 5s;)
        std::this_thread::sleep_for(1ms); // until the call has found its handle
    ASSERT_EQ(fault::hits(Site::handle_use), 1u);
    ASSERT_EQ(phxfs_file_close(fh_), 0);
    fh_ = nullptr;
    EXPECT_TRUE(returned) << "close returned while a call that had found the handle had yet to run";
    reader.join();
    EXPECT_EQ(got, 4096) << phxfs_last_error();
    EXPECT_EQ(first_mismatch(buf.get(), 4096, 0), 4096u);
}

// The same for a batch's requests, which take their holds on a handle from
// the request before them on it.
TEST_F(AsyncFaults, CloseWaitsForABatchsRequests) {
    delay_next_pread(300);
    constexpr uint64_t kLen = 4096;
    auto buf = host_buffer(8 * kLen);
    std::vector<phxfs_io> ios;
    for (uintptr_t i = 0; i < 8; ++i)
        ios.push_back({fh_, PHXFS_OP_READ, 0, buf.get(), i * kLen, kLen, i * kLen,
                       reinterpret_cast<void *>(i)});
    phxfs::Batch b(8);
    b.submit(ios.data(), 8);
    for (auto t0 = Clock::now(); fault::hits(Site::pread) == 0 && Clock::now() - t0 < 5s;)
        std::this_thread::sleep_for(1ms);
    ASSERT_GE(fault::hits(Site::pread), 1u);
    ASSERT_EQ(phxfs_file_close(fh_), 0);
    fh_ = nullptr;
    phxfs_completion cs[8];
    ASSERT_EQ(b.reap(cs, 0, 8, std::chrono::nanoseconds(0)), 8u)
        << "close returned before every request of the batch completed";
    for (const phxfs_completion &c : cs)
        EXPECT_EQ(c.result, static_cast<int64_t>(kLen)) << c.error;
    EXPECT_EQ(first_mismatch(buf.get(), 8 * kLen, 0), 8 * kLen);
}

// Cancel takes what has not started; the started request completes whole.
TEST_F(AsyncFaults, CancelLeavesTheStartedRequestAlone) {
    delay_next_pread(300);
    constexpr uint64_t kLen = 128 << 10;
    auto buf = host_buffer(10 * kLen);
    std::vector<phxfs_io> ios;
    for (uintptr_t i = 0; i < 10; ++i)
        ios.push_back({fh_, PHXFS_OP_READ, 0, buf.get(), i * kLen, kLen, (i * kLen) % (1 << 20),
                       reinterpret_cast<void *>(i)});
    phxfs::Batch b(10);
    // The executor takes what is pending as one group: the other nine go
    // once the first is running.
    b.submit(ios.data(), 1);
    for (auto t0 = Clock::now(); fault::hits(Site::pread) == 0 && Clock::now() - t0 < 5s;)
        std::this_thread::sleep_for(1ms);
    b.submit(ios.data() + 1, 9);
    EXPECT_EQ(b.cancel(), 9u);
    phxfs_completion cs[10];
    ASSERT_EQ(b.reap(cs, 10, 10, 10s), 10u);
    unsigned done = 0, canceled = 0;
    for (const phxfs_completion &c : cs) {
        if (c.status == PHXFS_IO_DONE) {
            ++done;
            EXPECT_EQ(c.result, static_cast<int64_t>(kLen));
            EXPECT_EQ(c.user_data, nullptr) << "the first request is the one that started";
            EXPECT_EQ(first_mismatch(buf.get(), kLen, 0), kLen);
        } else {
            ++canceled;
            EXPECT_EQ(c.status, PHXFS_IO_CANCELED);
            EXPECT_EQ(c.result, -ECANCELED);
        }
    }
    EXPECT_EQ(done, 1u);
    EXPECT_EQ(canceled, 9u);
}

// Destroying a batch cancels what waits and returns once the running
// request is done: the handle then closes at once.
TEST_F(AsyncFaults, DestroyWaitsForTheRunningRequest) {
    delay_next_pread(300);
    auto buf = host_buffer(4 * 4096);
    phxfs_batch_t b = nullptr;
    ASSERT_EQ(phxfs_batch_create(&b, 4), 0);
    for (uint64_t i = 0; i < 4; ++i) {
        phxfs_io io{fh_, PHXFS_OP_READ, 0, buf.get(), i * 4096, 4096, 0, nullptr};
        ASSERT_EQ(phxfs_batch_submit(b, &io, 1), 1);
    }
    for (auto t0 = Clock::now(); fault::hits(Site::pread) == 0 && Clock::now() - t0 < 5s;)
        std::this_thread::sleep_for(1ms);
    const auto t0 = Clock::now();
    ASSERT_EQ(phxfs_batch_destroy(b), 0);
    EXPECT_GE(Clock::now() - t0, 100ms) << "destroy did not wait for the running request";
    EXPECT_EQ(first_mismatch(buf.get(), 4096, 0), 4096u);
    const auto t1 = Clock::now();
    ASSERT_EQ(phxfs_file_close(fh_), 0);
    fh_ = nullptr;
    EXPECT_LT(Clock::now() - t1, 100ms);
}

// A group's requests go through the lanes in pieces of a staging buffer,
// large and small together, on several lanes at once: each request gets its
// own bytes (short at the end of the file), and a piece that fails fails
// its request alone.
TEST_F(AsyncFaults, PiecesOfAGroupFailTheirRequestAlone) {
    small_chunks(4, 64 << 10);
    constexpr uint64_t kFile = 1 << 20;
    struct Want {
        uint64_t off, n, got;
    };
    const std::vector<Want> want = {
        {1000, 300 << 10, 300 << 10},                // large, unaligned: six pieces
        {5000, 3000, 3000},                          // small
        {512 << 10, 256 << 10, 256 << 10},           // large, aligned
        {kFile - (100 << 10), 200 << 10, 100 << 10}, // past the end: short
        {70000, 64 << 10, 64 << 10},                 // one chunk's size, across two
    };
    uint64_t total = 0;
    for (const Want &w : want)
        total += w.n;
    const std::string wpath = dir_.file("w.dat");
    const int wfd = ::open(wpath.c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(wfd, 0);
    phxfs_file_t wfh = nullptr;
    ASSERT_EQ(phxfs_file_open(&wfh, 0, wfd), 0) << phxfs_last_error();
    for (Site site : {Site::count, Site::pread, Site::pwrite}) {
        SCOPED_TRACE(site == Site::count ? "no fault" : site == Site::pread ? "pread" : "pwrite");
        const bool write = site == Site::pwrite;
        if (site != Site::count)
            fault::arm(site, {.err = EIO}, 3, 1); // one piece, not the first
        auto buf = host_buffer(total);
        if (write)
            fill_pattern_fast(buf.get(), total, 0, 9);
        std::vector<phxfs_io> ios;
        uint64_t at = 0;
        for (uintptr_t i = 0; i < want.size(); ++i) {
            ios.push_back({write ? wfh : fh_, write ? PHXFS_OP_WRITE : PHXFS_OP_READ, 0, buf.get(),
                           at, want[i].n, want[i].off, reinterpret_cast<void *>(i)});
            at += want[i].n;
        }
        phxfs::Batch b(16);
        b.submit(ios.data(), static_cast<unsigned>(ios.size()));
        std::vector<phxfs_completion> cs(ios.size());
        ASSERT_EQ(b.reap(cs.data(), static_cast<unsigned>(ios.size()), 16, 10s), ios.size());
        unsigned failed = 0;
        for (const phxfs_completion &c : cs) {
            const auto i = reinterpret_cast<uintptr_t>(c.user_data);
            if (c.status == PHXFS_IO_FAILED) {
                ++failed;
                EXPECT_EQ(c.result, -EIO) << i << ": " << c.error;
                continue;
            }
            ASSERT_EQ(c.status, PHXFS_IO_DONE) << i;
            const uint64_t n = write ? want[i].n : want[i].got;
            EXPECT_EQ(c.result, static_cast<int64_t>(n)) << i << ": " << c.error;
            if (!write) {
                EXPECT_EQ(first_mismatch(buf.get() + ios[i].buf_offset, n, want[i].off), n) << i;
                continue;
            }
            std::vector<uint8_t> back(n);
            ASSERT_EQ(::pread(wfd, back.data(), n, want[i].off), static_cast<ssize_t>(n));
            EXPECT_EQ(first_mismatch(back.data(), n, ios[i].buf_offset, 9), n) << i;
        }
        EXPECT_EQ(failed, site == Site::count ? 0u : 1u);
        EXPECT_EQ(fault::hits(site == Site::count ? Site::pread : site),
                  site == Site::count ? 0u : 1u);
        fault::disarm();
    }
    ASSERT_EQ(phxfs_file_close(wfh), 0);
    ::close(wfd);
}

// No staging memory at all (pinned memory exhausted): every request of the
// group fails with ENOMEM, none is lost, and nothing keeps the handle.
TEST_F(AsyncFaults, NoStagingFailsTheGroupAndLosesNothing) {
    fault::arm(Site::staging_alloc, {.err = ENOMEM}, 0, 0); // every allocation
    auto buf = host_buffer(400 << 10);
    phxfs_io ios[] = {{fh_, PHXFS_OP_READ, 0, buf.get(), 0, 300 << 10, 0, nullptr},
                      {fh_, PHXFS_OP_READ, 0, buf.get(), 300 << 10, 4096, 8192, nullptr}};
    phxfs::Batch b(4);
    b.submit(ios, 2);
    phxfs_completion cs[2];
    ASSERT_EQ(b.reap(cs, 2, 2, 10s), 2u);
    for (const phxfs_completion &c : cs) {
        EXPECT_EQ(c.status, PHXFS_IO_FAILED);
        EXPECT_EQ(c.result, -ENOMEM) << c.error;
    }
    EXPECT_EQ(b.reap(cs, 0, 2, 0s), 0u) << "nothing more";
    fault::disarm();
    const auto t0 = Clock::now();
    ASSERT_EQ(phxfs_file_close(fh_), 0);
    fh_ = nullptr;
    EXPECT_LT(Clock::now() - t0, 1s) << "a request still held the handle";
}

} // namespace
