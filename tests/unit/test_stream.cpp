// Stream-ordered I/O (core/stream_io) on the host device. A GPU stream
// cannot exist here, so a stand-in plays one: a thread that runs its queue
// in order, "kernels" (functions) and the two memory operations the library
// queues (store a word; wait for a word). Everything else is the library's:
// the poller, the values read at execution time, the batch that runs the
// requests, the results. On a GPU, tests/gpu runs the same over CUDA.
#include "testutil.hpp"

#include "core/error.hpp"
#include "core/stream_io.hpp"

#include <dlfcn.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

using namespace phxtest;
using namespace std::chrono_literals;
using phxfs::core::Error;
using phxfs::core::StreamIo;
using phxfs::core::StreamOrder;
using phxfs::core::StreamRequest;

namespace {

// A stream: one thread running what is queued, in order.
class FakeStream {
  public:
    FakeStream() : t_([this] { run(); }) {}
    ~FakeStream() {
        push({});
        t_.join();
    }
    void push(std::function<void()> f) {
        {
            std::lock_guard lock(m_);
            q_.push_back(std::move(f));
        }
        cv_.notify_all();
    }
    // Waits until everything queued so far has run.
    void sync() {
        std::promise<void> p;
        auto f = p.get_future();
        push([&p] { p.set_value(); });
        f.wait();
    }

  private:
    void run() {
        for (;;) {
            std::function<void()> f;
            {
                std::unique_lock lock(m_);
                cv_.wait(lock, [this] { return !q_.empty(); });
                f = std::move(q_.front());
                q_.pop_front();
            }
            if (!f)
                return;
            f();
        }
    }
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> q_;
    std::thread t_;
};

class FakeOrder : public StreamOrder {
  public:
    explicit FakeOrder(bool *fail_wait = nullptr) : fail_wait_(fail_wait) {}
    uint32_t *alloc_words(size_t n) override {
        words_ = std::make_unique<uint32_t[]>(n); // zeroed
        return words_.get();
    }
    void signal(void *stream, uint32_t *w, uint32_t v) override {
        static_cast<FakeStream *>(stream)->push(
            [w, v] { __atomic_store_n(w, v, __ATOMIC_RELEASE); });
    }
    void wait(void *stream, uint32_t *w, uint32_t v) override {
        if (fail_wait_ && *fail_wait_)
            throw Error(EIO, "wait refused (test)");
        static_cast<FakeStream *>(stream)->push([w, v] {
            while (static_cast<int32_t>(__atomic_load_n(w, __ATOMIC_ACQUIRE) - v) < 0)
                std::this_thread::yield();
        });
    }

  private:
    bool *fail_wait_;
    std::unique_ptr<uint32_t[]> words_;
};

// A kernel that holds its stream until open() is called.
class Gate {
  public:
    std::function<void()> kernel() {
        return [this] { f_.wait(); };
    }
    void open() { p_.set_value(); }

  private:
    std::promise<void> p_;
    std::shared_future<void> f_ = p_.get_future().share();
};

class Stream : public DeviceTest {
  protected:
    void SetUp() override {
        DeviceTest::SetUp();
        path_ = pattern_file("s.dat", 4 << 20);
        fd_ = ::open(path_.c_str(), O_RDWR);
        ASSERT_GE(fd_, 0);
        ASSERT_EQ(phxfs_file_open(&fh_, 0, fd_), 0) << phxfs_last_error();
    }
    void TearDown() override {
        if (fh_)
            phxfs_file_close(fh_);
        ::close(fd_);
        DeviceTest::TearDown();
    }
    StreamRequest req(bool write, void *buf, const size_t *n, const off_t *off, ssize_t *res,
                      const off_t *buf_off = nullptr) const {
        return {reinterpret_cast<uintptr_t>(fh_), write, buf, n, off, buf_off, res};
    }
    std::string path_;
    int fd_ = -1;
    phxfs_file_t fh_ = nullptr;
};

// The requests run after the stream's earlier work and before its later
// work, and queueing them does not wait for the stream.
TEST_F(Stream, RunsInStreamOrderAgainstKernels) {
    StreamIo io(std::make_unique<FakeOrder>());
    FakeStream s;
    Gate gate;
    const size_t n = 300000;
    const off_t at = 12345, back_at = at;
    auto out = host_buffer(n), in = host_buffer(n);
    ssize_t wrote = 1, read = 1;
    bool saw_pattern = false;
    s.push(gate.kernel());
    s.push([&] { fill_pattern(out.get(), n, 0, 7); }); // the kernel producing the bytes
    io.enqueue(req(true, out.get(), &n, &at, &wrote), &s);
    s.push([&] { std::memset(out.get(), 0, n); }); // after the write: must not reach the file
    io.enqueue(req(false, in.get(), &n, &back_at, &read), &s);
    s.push([&] { saw_pattern = first_mismatch(in.get(), n, 0, 7) == n; }); // consumes the read
    // Queued, not run: the stream is held.
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(wrote, 1);
    EXPECT_EQ(read, 1);
    gate.open();
    s.sync();
    EXPECT_EQ(wrote, static_cast<ssize_t>(n));
    EXPECT_EQ(read, static_cast<ssize_t>(n));
    EXPECT_TRUE(saw_pattern);
    std::vector<uint8_t> file(n);
    ASSERT_EQ(::pread(fd_, file.data(), n, at), static_cast<ssize_t>(n));
    EXPECT_EQ(first_mismatch(file.data(), n, 0, 7), n);
}

// Size and offsets are what they are when the stream gets there.
TEST_F(Stream, ValuesAreReadWhenTheStreamGetsThere) {
    StreamIo io(std::make_unique<FakeOrder>());
    FakeStream s;
    auto buf = host_buffer(1 << 20);
    size_t n = 0;
    off_t off = -1, buf_off = 999999999;
    ssize_t got = 1;
    s.push([&] {
        n = 70000;
        off = 1 << 20;
        buf_off = 100;
    });
    io.enqueue(req(false, buf.get(), &n, &off, &got, &buf_off), &s);
    // Changed after the request has run: no effect on it.
    s.push([&] { n = 5; });
    s.sync();
    ASSERT_EQ(got, 70000);
    EXPECT_EQ(first_mismatch_fast(buf.get() + 100, 70000, 1 << 20), 70000u);
    EXPECT_EQ(buf[99], 0xAA);
}

// Failures at execution go to the result as -errno; the stream goes on.
// Some are refused at once: a closed handle, NULL pointers.
TEST_F(Stream, FailuresGoToTheResult) {
    StreamIo io(std::make_unique<FakeOrder>());
    FakeStream s;
    auto buf = host_buffer(8192);
    const size_t n = 4096;
    off_t bad = 0;
    const off_t zero = 0;
    ssize_t neg = 1, after = 1;
    s.push([&] { bad = -4096; });
    io.enqueue(req(false, buf.get(), &n, &bad, &neg), &s);
    io.enqueue(req(false, buf.get(), &n, &zero, &after), &s);
    s.sync();
    EXPECT_EQ(neg, -EINVAL);
    EXPECT_EQ(after, 4096);
    ssize_t r = 1;
    try {
        io.enqueue(req(false, buf.get(), nullptr, &zero, &r), &s);
        ADD_FAILURE() << "NULL size queued";
    } catch (const Error &e) {
        EXPECT_EQ(e.err(), EINVAL);
    }
    ASSERT_EQ(phxfs_file_close(fh_), 0);
    fh_ = nullptr;
    try {
        io.enqueue(req(false, buf.get(), &n, &zero, &r), &s);
        ADD_FAILURE() << "closed handle queued";
    } catch (const Error &e) {
        EXPECT_EQ(e.err(), EBADF);
    }
    s.sync();
    EXPECT_EQ(r, 1);
}

// A handle closed while its request waits for the stream: the request
// fails with EBADF when the stream gets there and never touches the fd.
TEST_F(Stream, HandleClosedBeforeTheStreamGetsThere) {
    StreamIo io(std::make_unique<FakeOrder>());
    FakeStream s;
    Gate gate;
    auto buf = host_buffer(4096);
    const size_t n = 4096;
    const off_t zero = 0;
    ssize_t r = 1;
    s.push(gate.kernel());
    io.enqueue(req(false, buf.get(), &n, &zero, &r), &s);
    ASSERT_EQ(phxfs_file_close(fh_), 0);
    fh_ = nullptr;
    gate.open();
    s.sync();
    EXPECT_EQ(r, -EBADF);
    EXPECT_EQ(buf[0], 0xAA);
}

// Many streams at once, many small requests each; each lands in its place.
TEST_F(Stream, ManyStreamsManyRequests) {
    StreamIo io(std::make_unique<FakeOrder>());
    constexpr int kStreams = 6, kPer = 300;
    const size_t n = 4096;
    auto buf = host_buffer(size_t{kStreams} * kPer * n);
    std::vector<off_t> offs(kStreams * kPer);
    std::vector<ssize_t> res(kStreams * kPer, 1);
    std::vector<std::unique_ptr<FakeStream>> ss;
    for (int i = 0; i < kStreams; ++i)
        ss.push_back(std::make_unique<FakeStream>());
    for (int k = 0; k < kPer; ++k)
        for (int i = 0; i < kStreams; ++i) {
            const int j = i * kPer + k;
            offs[j] = static_cast<off_t>((j * 7919u) % 1000u) * 4096 + j % 13;
            io.enqueue(
                req(false, buf.get() + size_t{static_cast<unsigned>(j)} * n, &n, &offs[j], &res[j]),
                ss[i].get());
        }
    for (auto &s : ss)
        s->sync();
    for (int j = 0; j < kStreams * kPer; ++j) {
        ASSERT_EQ(res[j], 4096) << j;
        ASSERT_EQ(first_mismatch(buf.get() + size_t{static_cast<unsigned>(j)} * n, n, offs[j]), n)
            << j;
    }
}

// A full queue refuses more (EAGAIN) until streams run; a request whose
// wait could not be queued never runs, and its place comes back.
TEST_F(Stream, CapacityAndRefusedWaits) {
    bool fail_wait = false;
    StreamIo io(std::make_unique<FakeOrder>(&fail_wait), 2);
    FakeStream s;
    Gate gate;
    auto buf = host_buffer(3 * 4096);
    const size_t n = 4096;
    const off_t zero = 0;
    ssize_t r[3] = {1, 1, 1};
    s.push(gate.kernel());
    io.enqueue(req(false, buf.get(), &n, &zero, &r[0]), &s);
    io.enqueue(req(false, buf.get() + 4096, &n, &zero, &r[1]), &s);
    try {
        io.enqueue(req(false, buf.get() + 8192, &n, &zero, &r[2]), &s);
        ADD_FAILURE() << "a third request queued in a queue of 2";
    } catch (const Error &e) {
        EXPECT_EQ(e.err(), EAGAIN);
    }
    gate.open();
    s.sync();
    EXPECT_EQ(r[0], 4096);
    EXPECT_EQ(r[1], 4096);
    // The stream signals, but would not wait: the write must not happen.
    auto zeros = host_buffer(4096, 0);
    fail_wait = true;
    ssize_t w = 1;
    EXPECT_THROW(io.enqueue(req(true, zeros.get(), &n, &zero, &w), &s), Error);
    s.sync();
    std::this_thread::sleep_for(20ms); // the poller sees the signal and frees the place
    fail_wait = false;
    std::vector<uint8_t> file(4096);
    ASSERT_EQ(::pread(fd_, file.data(), 4096, 0), 4096);
    EXPECT_EQ(first_mismatch(file.data(), 4096, 0), 4096u);
    EXPECT_EQ(w, 1);
    // Both places are free again.
    ssize_t again[2] = {1, 1};
    io.enqueue(req(false, buf.get(), &n, &zero, &again[0]), &s);
    io.enqueue(req(false, buf.get() + 4096, &n, &zero, &again[1]), &s);
    s.sync();
    EXPECT_EQ(again[0], 4096);
    EXPECT_EQ(again[1], 4096);
}

// Through the public API on a machine without a CUDA driver: refused with
// the reason, nothing queued.
TEST_F(Stream, PublicCallsSayWhyWithoutCuda) {
    if (void *h = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
        ::dlclose(h);
        GTEST_SKIP() << "a CUDA driver is present";
    }
    auto buf = host_buffer(4096);
    const size_t n = 4096;
    const off_t zero = 0;
    ssize_t r = 1;
    EXPECT_EQ(phxfs_file_read_stream(fh_, buf.get(), &n, &zero, nullptr, &r, nullptr), -1);
    EXPECT_EQ(errno, ENOTSUP);
    EXPECT_NE(std::string(phxfs_last_error()).find("CUDA"), std::string::npos)
        << phxfs_last_error();
    EXPECT_EQ(r, 1);
}

} // namespace
