// Stream-ordered I/O's host half (core/stream_io) over a stand-in stream: a
// thread that plays a stream's ops in order, as a GPU would (no GPU can
// exist here). The copy op does what memory/stream_copy.cu does. Order,
// values read at execution time, errors per request, staging reuse,
// threads at once. The same over CUDA: tests/gpu/test_gpu_stream.cpp.
#include "testutil.hpp"

#include "core/error.hpp"
#include "core/stream_io.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include <sys/wait.h>

using namespace phxtest;
using phxfs::core::Error;
using phxfs::core::StreamIo;
using phxfs::core::StreamOrder;
using phxfs::core::StreamRecord;
using phxfs::core::StreamRequest;

// LeakSanitizer asks this at exit (a weak hook of the sanitizer runtime;
// other builds never call it): ExitWithRequestsPendingDoesNotHang's child.
static int child_skips_leak_check = 0;
extern "C" int __lsan_is_turned_off() {
    return child_skips_leak_check;
}

namespace {

using namespace std::chrono_literals;

// A stream: ops run in order on its thread. A wait that is not released
// within 10 s marks the stream stuck and lets it go on, so that a deadlock
// fails a test instead of hanging it.
class FakeStream {
  public:
    FakeStream() : thread_([this] { run(); }) {}
    ~FakeStream() {
        {
            std::lock_guard lock(m_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    void then(std::function<void()> op) {
        {
            std::lock_guard lock(m_);
            ops_.push_back(std::move(op));
        }
        cv_.notify_all();
    }
    // Waits (10 s at most) until every op queued so far has run.
    bool sync() {
        std::unique_lock lock(m_);
        return idle_.wait_for(lock, 10s, [&] { return ops_.empty() && !busy_; });
    }
    bool stuck() const { return stuck_; }
    // Holds the stream at this point until open() (a kernel that runs long).
    void gate() {
        gate_open_ = false;
        then([this] {
            while (!gate_open_)
                std::this_thread::sleep_for(100us);
        });
    }
    void open() { gate_open_ = true; }

  private:
    void run() {
        std::unique_lock lock(m_);
        for (;;) {
            cv_.wait(lock, [&] { return stop_ || !ops_.empty(); });
            if (ops_.empty())
                return;
            auto op = std::move(ops_.front());
            ops_.pop_front();
            busy_ = true;
            lock.unlock();
            op();
            lock.lock();
            busy_ = false;
            if (ops_.empty())
                idle_.notify_all();
        }
    }
    friend class FakeOrder;
    std::mutex m_;
    std::condition_variable cv_, idle_;
    std::deque<std::function<void()>> ops_;
    bool busy_ = false, stop_ = false;
    std::atomic<bool> stuck_{false}, gate_open_{true};
    std::thread thread_;
};

class FakeOrder final : public StreamOrder {
  public:
    // A handle that names a different stream on each thread, as CUDA's
    // per-thread default stream does: the one bound with this_threads_stream.
    static inline void *const kPerThread = reinterpret_cast<void *>(0x2);
    static inline thread_local FakeStream *this_threads_stream = nullptr;

    ~FakeOrder() override {
        std::free(mem_);
        std::free(bounce_mem_);
    }
    void *alloc_shared(size_t bytes) override {
        mem_ = std::aligned_alloc(4096, bytes);
        std::memset(mem_, 0, bytes);
        return mem_;
    }
    uint64_t device_address(const void *p) const override { return reinterpret_cast<uint64_t>(p); }
    void prepare(void *stream) override {
        ++prepared;
        if (!stream)
            phxfs::core::fail(EINVAL, "no stream");
    }
    void write(void *stream, uint32_t *word, uint32_t v) override {
        maybe_fail();
        s(stream).then([word, v] { __atomic_store_n(word, v, __ATOMIC_RELEASE); });
    }
    void wait(void *stream, uint32_t *word, uint32_t v) override {
        maybe_fail();
        FakeStream *fs = &s(stream);
        fs->then([fs, word, v] {
            const auto deadline = std::chrono::steady_clock::now() + 10s;
            while (static_cast<int32_t>(__atomic_load_n(word, __ATOMIC_ACQUIRE) - v) < 0) {
                if (std::chrono::steady_clock::now() > deadline) {
                    fs->stuck_ = true;
                    return;
                }
                std::this_thread::yield();
            }
        });
    }
    void copy(void *stream, StreamRecord *rec, uint32_t gen, size_t) override {
        maybe_fail();
        s(stream).then([rec, gen] {
            if (__atomic_load_n(&rec->desc_gen, __ATOMIC_ACQUIRE) != gen)
                return;
            std::memmove(reinterpret_cast<void *>(rec->dst),
                         reinterpret_cast<const void *>(rec->src), rec->bytes);
        });
    }
    // The bounce memory: a second host buffer standing for the GPU's (none
    // with bounce_off), filled and emptied by to_device/to_host in order.
    uint64_t bounce(void *, size_t bytes) override {
        if (bounce_off)
            return 0;
        if (!bounce_mem_) {
            bounce_mem_ = std::aligned_alloc(4096, bytes);
            std::memset(bounce_mem_, 0xEE, bytes);
        }
        ++bounced;
        return reinterpret_cast<uint64_t>(bounce_mem_);
    }
    void to_device(void *stream, uint64_t dst, const void *src, size_t n) override {
        maybe_fail();
        s(stream).then([=] { std::memcpy(reinterpret_cast<void *>(dst), src, n); });
    }
    void to_host(void *stream, void *dst, uint64_t src, size_t n) override {
        maybe_fail();
        s(stream).then([=] { std::memcpy(dst, reinterpret_cast<const void *>(src), n); });
    }
    bool bounce_off = false;
    std::atomic<int> bounced{0};  // requests that took the bounce memory
    std::atomic<int> fail_at{-1}; // the op (counting from 0) that throws EIO
    std::atomic<int> ops{0};
    std::atomic<int> prepared{0};

  private:
    static FakeStream &s(void *stream) {
        return stream == kPerThread ? *this_threads_stream : *static_cast<FakeStream *>(stream);
    }
    void maybe_fail() {
        if (ops++ == fail_at)
            phxfs::core::fail(EIO, "injected queuing failure");
    }
    void *mem_ = nullptr;
    void *bounce_mem_ = nullptr;
};

class StreamIoTest : public DeviceTest {
  protected:
    void SetUp() override {
        DeviceTest::SetUp();
        path_ = dir_.file("stream");
        make_pattern_file(path_, kFile);
        fd_ = ::open(path_.c_str(), O_RDWR);
        ASSERT_GE(fd_, 0);
        ASSERT_EQ(phxfs_file_open(&fh_, 0, fd_), 0) << phxfs_last_error();
    }
    void TearDown() override {
        io_.reset();
        if (fh_)
            phxfs_file_close(fh_);
        if (fd_ >= 0)
            ::close(fd_);
        DeviceTest::TearDown();
    }
    StreamIo &make(StreamIo::Options opt = {}) {
        auto o = std::make_unique<FakeOrder>();
        order_ = o.get();
        io_ = std::make_unique<StreamIo>(std::move(o), opt);
        return *io_;
    }
    static StreamIo::Options small() {
        StreamIo::Options o;
        o.records = 16;
        o.round_bytes = 64 << 10;
        o.staging_bytes = 256 << 10;
        o.threads = 2;
        return o;
    }
    uintptr_t key() const { return reinterpret_cast<uintptr_t>(fh_); }
    // errno of what fn throws (0: nothing).
    template <typename Fn> static int err_of(Fn &&fn) {
        try {
            fn();
        } catch (const Error &e) {
            return e.err();
        }
        return 0;
    }

    static constexpr uint64_t kFile = 8 << 20;
    std::string path_;
    int fd_ = -1;
    phxfs_file_t fh_ = nullptr;
    FakeOrder *order_ = nullptr;
    std::unique_ptr<StreamIo> io_;
};

TEST_F(StreamIoTest, ReadRunsInStreamOrderWithoutBlockingTheCaller) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(1 << 20);
    size_t size = 64 << 10;
    off_t f_off = 4096 * 3 + 5, b_off = 7;
    ssize_t result = 12345;
    std::atomic<bool> before_saw_data{true}, after_saw_data{false};
    st.gate(); // a long kernel ahead of the read
    st.then([&] { before_saw_data = first_mismatch(buf.get() + 7, size, f_off) == size; });
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off, &result},
               &st);
    st.then([&] { after_saw_data = first_mismatch(buf.get() + 7, size, f_off) == size; });
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(result, 12345) << "the read ran before the stream got to it";
    st.open();
    ASSERT_TRUE(st.sync());
    EXPECT_FALSE(st.stuck());
    EXPECT_FALSE(before_saw_data);
    EXPECT_TRUE(after_saw_data);
    EXPECT_EQ(result, static_cast<ssize_t>(size));
    EXPECT_EQ(buf[6], 0xAA);
    EXPECT_EQ(buf[7 + size], 0xAA);
}

TEST_F(StreamIoTest, ValuesAreReadWhenTheStreamGetsThere) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(1 << 20);
    size_t size = 512 << 10; // the most, at enqueue
    off_t f_off = 0, b_off = 0;
    ssize_t result = 0;
    // Work queued before the read sets its size and offsets (as a kernel
    // would), after the call has read the most.
    st.gate();
    st.then([&] {
        size = 10000;
        f_off = 123457;
        b_off = 33;
    });
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off, &result},
               &st);
    st.open();
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, 10000);
    EXPECT_EQ(first_mismatch(buf.get() + 33, 10000, 123457), 10000u);
    EXPECT_EQ(buf[32], 0xAA);
    EXPECT_EQ(buf[33 + 10000], 0xAA);
}

TEST_F(StreamIoTest, WriteRunsInStreamOrder) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(1 << 20, 0);
    size_t size = 100000;
    off_t f_off = 777, b_off = 9;
    ssize_t result = 0;
    // The bytes to write come from work queued before the write.
    st.then([&] { fill_pattern(buf.get() + 9, size, f_off, 7); });
    io.enqueue({key(), true, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off, &result},
               &st);
    std::atomic<ssize_t> seen_after{0};
    st.then([&] { seen_after = result; });
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, 100000);
    EXPECT_EQ(seen_after, 100000) << "the result must be there before the stream goes on";
    std::vector<uint8_t> back(size);
    ASSERT_EQ(::pread(fd_, back.data(), size, f_off), static_cast<ssize_t>(size));
    EXPECT_EQ(first_mismatch(back.data(), size, f_off, 7), size);
}

TEST_F(StreamIoTest, LargeRequestsGoInRoundsThroughOneStaging) {
    StreamIo &io = make(small()); // rounds of 64 KiB
    FakeStream st;
    const size_t n = (1 << 20) + 5;
    auto buf = host_buffer(2 << 20);
    size_t size = n;
    off_t f_off = 4097, b_off = 3;
    ssize_t result = 0;
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off, &result},
               &st);
    ASSERT_TRUE(st.sync());
    ASSERT_EQ(result, static_cast<ssize_t>(n));
    EXPECT_EQ(first_mismatch(buf.get() + 3, n, 4097), n);
    EXPECT_EQ(buf[3 + n], 0xAA);

    // And back out, at another offset, then read it with pread.
    fill_pattern(buf.get() + 3, n, 0, 9);
    off_t w_off = 3 << 20;
    io.enqueue({key(), true, reinterpret_cast<char *>(buf.get()), &size, &w_off, &b_off, &result},
               &st);
    ASSERT_TRUE(st.sync());
    ASSERT_EQ(result, static_cast<ssize_t>(n));
    std::vector<uint8_t> back(n);
    ASSERT_EQ(::pread(fd_, back.data(), n, w_off), static_cast<ssize_t>(n));
    EXPECT_EQ(first_mismatch(back.data(), n, 0, 9), n);
    for (int i = 0; i < 1000 && io.free_records() != 16u; ++i) // freed just after done
        std::this_thread::sleep_for(1ms);
    EXPECT_EQ(io.free_records(), 16u);
    EXPECT_EQ(io.free_staging_bytes(), size_t{256} << 10);
}

// Rounds over 16 KiB go through the GPU's copy of the staging (one copy in
// before the kernel, one out after it); smaller ones, and every round where
// the bounce memory could not be made, through the staging itself. The
// stand-in's bounce memory starts as 0xEE: a kernel that read it before the
// copy in, or a write whose copy out never ran, moves those bytes.
TEST_F(StreamIoTest, LargeRoundsGoThroughTheBounceMemory) {
    for (const bool bounce_off : {false, true}) {
        StreamIo &io = make(small()); // rounds of 64 KiB
        order_->bounce_off = bounce_off;
        FakeStream st;
        auto buf = host_buffer(1 << 20);
        ssize_t result = 0;
        off_t b_off = 5;
        for (const size_t n : {size_t{4096}, size_t{300000}}) {
            size_t size = n;
            off_t f_off = 8191;
            io.enqueue(
                {key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off, &result},
                &st);
            ASSERT_TRUE(st.sync());
            ASSERT_EQ(result, static_cast<ssize_t>(n));
            EXPECT_EQ(first_mismatch(buf.get() + 5, n, 8191), n) << n << " bytes";
        }
        EXPECT_EQ(order_->bounced.load(), bounce_off ? 0 : 1) << "only the large read bounces";

        const size_t n = 200000;
        size_t size = n;
        off_t w_off = 1 << 20;
        fill_pattern(buf.get() + 5, n, 0, 3);
        io.enqueue(
            {key(), true, reinterpret_cast<char *>(buf.get()), &size, &w_off, &b_off, &result},
            &st);
        ASSERT_TRUE(st.sync());
        ASSERT_EQ(result, static_cast<ssize_t>(n));
        std::vector<uint8_t> back(n);
        ASSERT_EQ(::pread(fd_, back.data(), n, w_off), static_cast<ssize_t>(n));
        EXPECT_EQ(first_mismatch(back.data(), n, 0, 3), n) << "bounce " << !bounce_off;
        EXPECT_EQ(order_->bounced.load(), bounce_off ? 0 : 2);
        EXPECT_FALSE(st.stuck());
        io_.reset();
    }
}

TEST_F(StreamIoTest, ReadsAreShortAtEndOfFile) {
    StreamIo &io = make(small());
    FakeStream st;
    auto buf = host_buffer(1 << 20);
    size_t size = 300 << 10;
    off_t f_off = kFile - 100000, b_off = 0;
    ssize_t result = 0;
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off, &result},
               &st);
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, 100000);
    EXPECT_EQ(first_mismatch(buf.get(), 100000, f_off), 100000u);
    EXPECT_EQ(buf[100000], 0xAA);
}

TEST_F(StreamIoTest, ZeroBytes) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(4096);
    size_t size = 0;
    off_t f_off = 0;
    ssize_t result = -1;
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, nullptr, &result},
               &st);
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, 0);
    EXPECT_EQ(buf[0], 0xAA);
}

TEST_F(StreamIoTest, ErrorsAtExecutionFailTheRequestAloneAndTheStreamGoesOn) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(1 << 20);
    char *b = reinterpret_cast<char *>(buf.get());
    size_t grows = 4096, ok_size = 4096;
    off_t neg = 0, zero = 0, ok_off = 4096;
    ssize_t r_grow = 0, r_neg = 0, r_ok = 0;
    st.gate();
    io.enqueue({key(), false, b, &grows, &zero, nullptr, &r_grow}, &st);
    io.enqueue({key(), false, b, &ok_size, &neg, nullptr, &r_neg}, &st);
    io.enqueue({key(), false, b + 8192, &ok_size, &ok_off, nullptr, &r_ok}, &st);
    grows = 8192; // past its most
    neg = -1;
    st.open();
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(r_grow, -EINVAL);
    EXPECT_EQ(r_neg, -EINVAL);
    EXPECT_EQ(r_ok, 4096);
    EXPECT_EQ(first_mismatch(buf.get() + 8192, 4096, 4096), 4096u);
    EXPECT_EQ(buf[0], 0xAA) << "a failed read moved data";
}

TEST_F(StreamIoTest, RequestsCountOnTheCompatPathOfTheirDevice) {
    StreamIo &io = make(small()); // the read goes in 3 rounds: still one call
    FakeStream st;
    auto buf = host_buffer(1 << 20);
    char *b = reinterpret_cast<char *>(buf.get());
    size_t rsize = 150000, wsize = 4096, bad_size = 4096;
    off_t roff = 0, woff = 1 << 20, bad_off = 0;
    ssize_t r = 0, w = 0, bad = 0;
    ASSERT_EQ(phxfs_reset_stats(0), 0);
    io.enqueue({key(), false, b, &rsize, &roff, nullptr, &r}, &st);
    io.enqueue({key(), true, b + (512 << 10), &wsize, &woff, nullptr, &w}, &st);
    st.then([&] { bad_off = -1; });
    io.enqueue({key(), false, b, &bad_size, &bad_off, nullptr, &bad}, &st);
    ASSERT_TRUE(st.sync());
    ASSERT_EQ(r, 150000);
    ASSERT_EQ(w, 4096);
    ASSERT_EQ(bad, -EINVAL);
    phxfs_stats s{};
    s.size = sizeof s;
    ASSERT_EQ(phxfs_get_stats(0, &s), 0) << phxfs_last_error();
    const phxfs_path_stats &c = s.path[PHXFS_PATH_COMPAT];
    EXPECT_EQ(c.read_bytes, 150000u);
    EXPECT_EQ(c.read_calls, 1u);
    EXPECT_EQ(c.write_bytes, 4096u);
    EXPECT_EQ(c.write_calls, 1u);
    EXPECT_EQ(s.path[PHXFS_PATH_DIRECT].read_bytes + s.path[PHXFS_PATH_DIRECT].write_bytes, 0u);
    EXPECT_EQ(s.errors, 1u);
}

TEST_F(StreamIoTest, AHandleClosedBeforeTheStreamGetsThereFailsWithEbadf) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(4096);
    size_t size = 4096;
    off_t off = 0;
    ssize_t result = 0;
    st.gate();
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &off, nullptr, &result},
               &st);
    ASSERT_EQ(phxfs_file_close(fh_), 0) << "close must not wait for a request not yet reached";
    fh_ = nullptr;
    st.open();
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, -EBADF);
    EXPECT_EQ(buf[0], 0xAA);
}

TEST_F(StreamIoTest, AFailingWriteReportsErrno) {
    StreamIo &io = make();
    FakeStream st;
    // A file over the file size limit: pwrite fails with EFBIG.
    auto buf = host_buffer(4096);
    size_t size = 4096;
    off_t off = std::numeric_limits<off_t>::max() - 100;
    ssize_t result = 0;
    io.enqueue({key(), true, reinterpret_cast<char *>(buf.get()), &size, &off, nullptr, &result},
               &st);
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, -EINVAL) << "range overflows";
    off = off_t{1} << 62; // beyond ext4/xfs/tmpfs's largest file
    io.enqueue({key(), true, reinterpret_cast<char *>(buf.get()), &size, &off, nullptr, &result},
               &st);
    ASSERT_TRUE(st.sync());
    EXPECT_LT(result, 0);
    EXPECT_TRUE(result == -EFBIG || result == -EINVAL) << result;
}

TEST_F(StreamIoTest, EnqueueErrors) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(4096);
    char *b = reinterpret_cast<char *>(buf.get());
    size_t size = 4096, huge = size_t{1} << 62;
    off_t off = 0;
    ssize_t result = 0;
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, nullptr, &size, &off, nullptr, &result}, &st);
              }),
              EINVAL);
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, b, nullptr, &off, nullptr, &result}, &st);
              }),
              EINVAL);
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, b, &size, nullptr, nullptr, &result}, &st);
              }),
              EINVAL);
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, b, &size, &off, nullptr, nullptr}, &st);
              }),
              EINVAL);
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, b, &huge, &off, nullptr, &result}, &st);
              }),
              EINVAL);
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, b, &size, &off, nullptr, &result}, nullptr);
              }),
              EINVAL)
        << "a bad stream";
    EXPECT_EQ(err_of([&] {
                  io.enqueue({12345, false, b, &size, &off, nullptr, &result}, &st);
              }),
              EBADF);
    // A handle of a read-only fd cannot write.
    const int ro = ::open(path_.c_str(), O_RDONLY);
    phxfs_file_t rfh = nullptr;
    ASSERT_EQ(phxfs_file_open(&rfh, 0, ro), 0);
    EXPECT_EQ(err_of([&] {
                  io.enqueue(
                      {reinterpret_cast<uintptr_t>(rfh), true, b, &size, &off, nullptr, &result},
                      &st);
              }),
              EBADF);
    phxfs_file_close(rfh);
    ::close(ro);
    EXPECT_EQ(order_->ops, 0) << "a refused request queued something";
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, 0);
    EXPECT_EQ(io.free_records(), StreamIo::Options{}.records);
}

TEST_F(StreamIoTest, EagainWhenRecordsOrStagingAreInUseNeverBlocks) {
    StreamIo::Options o = small();
    StreamIo &io = make(o);
    FakeStream st;
    auto buf = host_buffer(1 << 20);
    char *b = reinterpret_cast<char *>(buf.get());
    std::vector<size_t> sizes(64, 4096);
    std::vector<off_t> offs(64, 0);
    std::vector<ssize_t> results(64, 0);
    st.gate();
    unsigned queued = 0;
    int err = 0;
    for (; queued < 64; ++queued) {
        err = err_of([&] {
            io.enqueue({key(), false, b, &sizes[queued], &offs[queued], nullptr, &results[queued]},
                       &st);
        });
        if (err)
            break;
    }
    EXPECT_EQ(err, EAGAIN);
    EXPECT_EQ(queued, o.records);
    EXPECT_EQ(io.free_records(), 0u);
    st.open();
    ASSERT_TRUE(st.sync());
    for (unsigned i = 0; i < queued; ++i)
        EXPECT_EQ(results[i], 4096);
    // The service threads free them once they see released (after the results).
    for (int i = 0; i < 1000 && io.free_staging_bytes() != o.staging_bytes; ++i)
        std::this_thread::sleep_for(1ms);
    // Staging: 256 KiB holds three requests of 64 KiB (+16, in pages) at once.
    st.gate();
    size_t big = 64 << 10;
    off_t zero = 0;
    ssize_t r[4] = {};
    int errs[4];
    for (int i = 0; i < 4; ++i)
        errs[i] = err_of([&] { io.enqueue({key(), false, b, &big, &zero, nullptr, &r[i]}, &st); });
    EXPECT_EQ(errs[0], 0);
    EXPECT_EQ(errs[1], 0);
    EXPECT_EQ(errs[2], 0);
    EXPECT_EQ(errs[3], EAGAIN);
    st.open();
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(r[2], 64 << 10);
    // Wait for the service threads to free them (released comes after the result).
    for (int i = 0; i < 1000 && io.free_records() != o.records; ++i)
        std::this_thread::sleep_for(1ms);
    EXPECT_EQ(io.free_records(), o.records);
    EXPECT_EQ(io.free_staging_bytes(), o.staging_bytes);
}

TEST_F(StreamIoTest, ManyRequestsReuseTheStaging) {
    StreamIo::Options o = small();
    StreamIo &io = make(o);
    FakeStream st;
    constexpr unsigned kN = 2000;
    auto buf = host_buffer(kN * 1024);
    std::vector<size_t> sizes(kN);
    std::vector<off_t> offs(kN), boffs(kN);
    std::vector<ssize_t> results(kN, -1);
    unsigned again = 0;
    for (unsigned i = 0; i < kN; ++i) {
        sizes[i] = 1000 + i % 24;
        offs[i] = static_cast<off_t>(i) * 4000 + 1;
        boffs[i] = static_cast<off_t>(i) * 1024;
        for (;;) {
            const int err = err_of([&] {
                io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &sizes[i], &offs[i],
                            &boffs[i], &results[i]},
                           &st);
            });
            if (err == 0)
                break;
            ASSERT_EQ(err, EAGAIN);
            ++again;
            ASSERT_TRUE(st.sync());
        }
    }
    ASSERT_TRUE(st.sync());
    EXPECT_FALSE(st.stuck());
    EXPECT_GT(again, 0u);
    for (unsigned i = 0; i < kN; ++i) {
        ASSERT_EQ(results[i], static_cast<ssize_t>(sizes[i])) << i;
        ASSERT_EQ(first_mismatch(buf.get() + boffs[i], sizes[i], offs[i]), sizes[i]) << i;
    }
}

TEST_F(StreamIoTest, ThreadsAndStreamsAtOnce) {
    StreamIo &io = make();
    constexpr unsigned kThreads = 4, kPer = 300;
    std::vector<std::thread> threads;
    std::atomic<unsigned> bad{0};
    for (unsigned t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            FakeStream st;
            auto buf = host_buffer(kPer * 4096, 0);
            std::vector<size_t> sizes(kPer, 4096);
            std::vector<off_t> offs(kPer), boffs(kPer);
            std::vector<ssize_t> results(kPer, -1);
            for (unsigned i = 0; i < kPer; ++i) {
                offs[i] = static_cast<off_t>((t * kPer + i) * 4096);
                boffs[i] = static_cast<off_t>(i * 4096);
                const bool write = i % 2;
                if (write) // this stream writes the block it read just before
                    offs[i] = offs[i - 1], boffs[i] = boffs[i - 1];
                if (err_of([&] {
                        io.enqueue({key(), write, reinterpret_cast<char *>(buf.get()), &sizes[i],
                                    &offs[i], &boffs[i], &results[i]},
                                   &st);
                    }))
                    ++bad;
            }
            if (!st.sync() || st.stuck())
                ++bad;
            for (unsigned i = 0; i < kPer; ++i)
                if (results[i] != 4096 || first_mismatch(buf.get() + boffs[i], 4096,
                                                         static_cast<uint64_t>(offs[i])) != 4096)
                    ++bad;
        });
    }
    for (auto &th : threads)
        th.join();
    EXPECT_EQ(bad, 0u);
    // The file is unchanged: every write wrote back what was read.
    std::vector<uint8_t> all(kThreads * kPer * 4096);
    ASSERT_EQ(::pread(fd_, all.data(), all.size(), 0), static_cast<ssize_t>(all.size()));
    EXPECT_EQ(first_mismatch_fast(all.data(), all.size(), 0), all.size());
}

// Two streams under one handle (each thread's per-thread default stream):
// the first request under it waits behind a long kernel on its thread's
// stream, the second's stream is free. The second must still complete while
// the first waits, even while a third stream on the same service thread
// keeps making progress (a service thread that stepped only each handle's
// oldest request, and every request only when idle, held it for as long as
// the third stream ran).
TEST_F(StreamIoTest, StreamsSharingAHandleDoNotWaitForEachOther) {
    StreamIo::Options opt;
    opt.threads = 1; // every stream on one service thread
    opt.spin = 20s;  // never idle long enough to nap: only the periodic full pass can step b's
    StreamIo &io = make(opt);
    FakeStream a, b, c;
    auto buf = host_buffer(3 << 20);
    size_t size = 4096;
    off_t f_off = 0, b_off_a = 0, b_off_b = 1 << 20, b_off_c = 2 << 20;
    ssize_t ra = 0, rb = 0;
    a.gate(); // a long kernel ahead on a's stream
    FakeOrder::this_threads_stream = &a;
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off_a, &ra},
               FakeOrder::kPerThread);
    std::thread tb([&] {
        FakeOrder::this_threads_stream = &b;
        io.enqueue(
            {key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off, &b_off_b, &rb},
            FakeOrder::kPerThread);
    });
    tb.join();
    // Stream c: one request after another, as long as b's has not finished.
    std::atomic<bool> stop{false};
    std::thread tc([&] {
        std::vector<ssize_t> rc(64);
        for (unsigned i = 0; !stop; i = (i + 1) % 64) {
            if (err_of([&] {
                    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &f_off,
                                &b_off_c, &rc[i]},
                               &c);
                }))
                c.sync(); // all records in use
        }
        c.sync();
    });
    const bool b_done = b.sync();
    stop = true;
    tc.join();
    EXPECT_TRUE(b_done && !b.stuck()) << "the second stream's request never completed";
    EXPECT_EQ(rb, 4096);
    EXPECT_EQ(ra, 0) << "the first ran before its stream got there";
    a.open();
    ASSERT_TRUE(a.sync());
    EXPECT_EQ(ra, 4096);
    EXPECT_FALSE(a.stuck());
}

TEST_F(StreamIoTest, AQueuingFailurePartWayLeavesTheStreamGoing) {
    StreamIo &io = make();
    FakeStream st;
    auto buf = host_buffer(8192);
    char *b = reinterpret_cast<char *>(buf.get());
    size_t size = 4096;
    off_t off = 0;
    ssize_t result = 777;
    const unsigned records = io.free_records();
    // The first op fails: nothing queued, nothing kept.
    order_->fail_at = order_->ops.load();
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, b, &size, &off, nullptr, &result}, &st);
              }),
              EIO);
    EXPECT_EQ(io.free_records(), records);
    // The kernel launch (third op) fails after reached and the wait are queued.
    order_->fail_at = order_->ops.load() + 2;
    EXPECT_EQ(err_of([&] {
                  io.enqueue({key(), false, b, &size, &off, nullptr, &result}, &st);
              }),
              EIO);
    std::atomic<bool> went_on{false};
    st.then([&] { went_on = true; });
    ASSERT_TRUE(st.sync());
    EXPECT_FALSE(st.stuck()) << "the wait queued by a failed enqueue held the stream";
    EXPECT_TRUE(went_on);
    EXPECT_EQ(result, 777) << "a failed enqueue wrote a result";
    EXPECT_EQ(buf[0], 0xAA);
    EXPECT_EQ(io.free_records(), records - 1) << "its record is kept (leaked) for good";
    // Later requests work.
    order_->fail_at = -1;
    io.enqueue({key(), false, b, &size, &off, nullptr, &result}, &st);
    ASSERT_TRUE(st.sync());
    EXPECT_EQ(result, 4096);
}

TEST_F(StreamIoTest, DestroyWithNothingPendingAndRegister) {
    {
        StreamIo &io = make(small());
        FakeStream st;
        io.register_stream(&st);
        EXPECT_EQ(order_->prepared, 1);
        EXPECT_EQ(err_of([&] { io.register_stream(nullptr); }), EINVAL);
        io_.reset(); // nothing ever queued
    }
    StreamIo &io = make(small());
    FakeStream st;
    auto buf = host_buffer(4096);
    size_t size = 4096;
    off_t off = 0;
    ssize_t result = 0;
    io.enqueue({key(), false, reinterpret_cast<char *>(buf.get()), &size, &off, nullptr, &result},
               &st);
    ASSERT_TRUE(st.sync());
    const auto t0 = std::chrono::steady_clock::now();
    io_.reset(); // the request is passed; the threads stop at once
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
    EXPECT_EQ(result, 4096);
}

TEST_F(StreamIoTest, TheCApiSaysWhyItCannotRunHere) {
    // No CUDA driver on this machine (or PHXFS_NO_CUDA): ENOTSUP, and the
    // argument checks that need no driver still come first where they can.
    size_t size = 4096;
    off_t off = 0;
    ssize_t result = 0;
    char b[16];
    int dummy_stream;
    const int rc = phxfs_file_read_stream(fh_, b, &size, &off, nullptr, &result, &dummy_stream);
    if (rc == 0)
        GTEST_SKIP() << "a CUDA driver is here";
    EXPECT_EQ(errno, ENOTSUP) << phxfs_last_error();
    EXPECT_EQ(phxfs_stream_register(&dummy_stream, 1), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_stream_register(&dummy_stream, 0), -1);
    EXPECT_EQ(errno, ENOTSUP);
}

// Waits (10 s at most) for child pid; its exit status, or -1 when it hung
// (then killed).
int wait_child(pid_t pid) {
    int status = 0;
    for (int i = 0; i < 1000; ++i) {
        if (::waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        std::this_thread::sleep_for(10ms);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return -1;
}

TEST_F(StreamIoTest, AForkChildHasNoneOfTheParentsStreamIo) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        size_t size = 4096;
        off_t off = 0;
        ssize_t result = 0;
        char b[16];
        int not_a_stream;
        const int rc = phxfs_file_read_stream(fh_, b, &size, &off, nullptr, &result, &not_a_stream);
        // EBADF: the parent's handle is closed here; ENOTSUP: no CUDA here.
        ::_exit(rc == -1 && (errno == EBADF || errno == ENOTSUP) ? 0 : 1);
    }
    EXPECT_EQ(wait_child(pid), 0);
}

TEST_F(StreamIoTest, ExitWithRequestsPendingDoesNotHang) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        // A process of its own: a request its stream never gets to (held by
        // a kernel that never ends), then exit. Nothing may wait for it.
        phxfs_file_t fh = nullptr;
        if (phxfs_open(0) != 0 || phxfs_file_open(&fh, 0, fd_) != 0)
            ::_exit(2);
        // A fork child abandons the parent's devices (their locks may be
        // held by threads that are not here), and this one leaves a request
        // pending on purpose: nothing for LeakSanitizer to look at.
        child_skips_leak_check = 1;
        auto *io = new StreamIo(std::make_unique<FakeOrder>(), small());
        auto *st = new FakeStream; // never destroyed: its thread is held at the gate
        st->gate();
        static size_t size = 4096;
        static off_t off = 0;
        static ssize_t result = 0;
        static char b[4096];
        try {
            io->enqueue({reinterpret_cast<uintptr_t>(fh), false, b, &size, &off, nullptr, &result},
                        st);
        } catch (...) {
            ::_exit(3);
        }
        std::exit(0); // static destructors and atexit handlers run
    }
    EXPECT_EQ(wait_child(pid), 0) << "-1: the process hung at exit";
}

} // namespace
