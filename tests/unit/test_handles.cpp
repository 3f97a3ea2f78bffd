// File handles, futures and batches (phxfs.h 0.2) on the host device: the
// same bytes as the fd calls, errors per request, and lifetimes (a closed
// handle is gone for good; closing waits for the requests using it).
#include "testutil.hpp"

#include <phxfs/phxfs.hpp>

#include <atomic>
#include <chrono>
#include <random>
#include <set>
#include <thread>

using namespace phxtest;
using namespace std::chrono_literals;

namespace {

class Handles : public DeviceTest {
  protected:
    // A handle on path opened with flags; closed (and the fd) at TearDown.
    phxfs_file_t open_handle(const std::string &path, int flags) {
        const int fd = ::open(path.c_str(), flags | O_CREAT, 0644);
        EXPECT_GE(fd, 0) << path;
        fds_.push_back(fd);
        phxfs_file_t fh = nullptr;
        EXPECT_EQ(phxfs_file_open(&fh, 0, fd), 0) << phxfs_last_error();
        fhs_.push_back(fh);
        return fh;
    }
    void TearDown() override {
        for (phxfs_file_t fh : fhs_)
            phxfs_file_close(fh); // some tests closed theirs already
        for (int fd : fds_)
            ::close(fd);
        DeviceTest::TearDown();
    }
    std::vector<int> fds_;
    std::vector<phxfs_file_t> fhs_;
};

TEST_F(Handles, ReadsAndWritesAsTheFdCallsDo) {
    small_chunks();
    const uint64_t n = 3 << 20;
    const std::string path = pattern_file("h.dat", n);
    for (int flags : {O_RDWR, O_RDWR | O_DIRECT}) {
        phxfs_file_t fh = open_handle(path, flags);
        auto buf = host_buffer(n);
        for (uint64_t off : {0ull, 1ull, 4095ull, 65536ull + 17}) {
            const size_t len = n - off - 100;
            ASSERT_EQ(phxfs_file_read(fh, buf.get(), 3, len, off), static_cast<ssize_t>(len))
                << phxfs_last_error();
            EXPECT_EQ(first_mismatch_fast(buf.get() + 3, len, off), len) << off;
        }
        // Past the end: short, then nothing.
        EXPECT_EQ(phxfs_file_read(fh, buf.get(), 0, 8192, n - 100), 100);
        EXPECT_EQ(phxfs_file_read(fh, buf.get(), 0, 8192, n + 1), 0);
        // Write a pattern of another seed in the middle, read it back by fd.
        fill_pattern(buf.get(), 70000, 1000, 9);
        ASSERT_EQ(phxfs_file_write(fh, buf.get(), 0, 70000, 1000), 70000) << phxfs_last_error();
        std::vector<uint8_t> back(70000);
        const int fd = ::open(path.c_str(), O_RDONLY);
        ASSERT_EQ(::pread(fd, back.data(), back.size(), 1000), 70000);
        ::close(fd);
        EXPECT_EQ(first_mismatch(back.data(), back.size(), 1000, 9), back.size());
        make_pattern_file(path, n); // back to seed 1 for the next flags
    }
}

// The handle keeps the fd's flags but not the file's size: a file that
// grows after the handle opened reads whole.
TEST_F(Handles, SeeTheFileGrow) {
    const std::string path = pattern_file("grow.dat", 4096);
    phxfs_file_t fh = open_handle(path, O_RDONLY);
    auto buf = host_buffer(1 << 20);
    EXPECT_EQ(phxfs_file_read(fh, buf.get(), 0, 1 << 20, 0), 4096);
    make_pattern_file(path, 1 << 20); // grows in place (O_TRUNC, then written)
    ASSERT_EQ(phxfs_file_read(fh, buf.get(), 0, 1 << 20, 0), 1 << 20) << phxfs_last_error();
    EXPECT_EQ(first_mismatch_fast(buf.get(), 1 << 20, 0), 1u << 20);
}

TEST_F(Handles, ClosedHandlesAreGoneForGood) {
    const std::string path = pattern_file("c.dat", 8192);
    const int fd = ::open(path.c_str(), O_RDONLY);
    phxfs_file_t a = nullptr, b = nullptr;
    ASSERT_EQ(phxfs_file_open(&a, 0, fd), 0);
    ASSERT_EQ(phxfs_file_close(a), 0);
    ASSERT_EQ(phxfs_file_open(&b, 0, fd), 0);
    EXPECT_NE(a, b) << "a closed handle's key must never name a newer handle";
    char buf[16];
    errno = 0;
    EXPECT_EQ(phxfs_file_read(a, buf, 0, sizeof buf, 0), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_NE(std::string(phxfs_last_error()).find("not an open file handle"), std::string::npos);
    EXPECT_EQ(phxfs_file_close(a), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(phxfs_file_read(b, buf, 0, sizeof buf, 0), 16);
    EXPECT_EQ(phxfs_file_close(b), 0);
    ::close(fd);
}

TEST_F(Handles, BadArgumentsAreClear) {
    phxfs_file_t fh = nullptr;
    errno = 0;
    EXPECT_EQ(phxfs_file_open(nullptr, 0, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_file_open(&fh, 0, -1), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(phxfs_file_open(&fh, 99, 0), -1);
    EXPECT_EQ(errno, ENODEV);
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    EXPECT_EQ(phxfs_file_open(&fh, 0, p[0]), -1);
    EXPECT_EQ(errno, ESPIPE);
    ::close(p[0]);
    ::close(p[1]);
    // Access is checked per request: a read-only handle refuses writes, an
    // O_APPEND one positional writes.
    const std::string path = pattern_file("ro.dat", 4096);
    phxfs_file_t ro = open_handle(path, O_RDONLY);
    phxfs_file_t ap = open_handle(path, O_WRONLY | O_APPEND);
    char buf[4096] = {};
    EXPECT_EQ(phxfs_file_write(ro, buf, 0, sizeof buf, 0), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(phxfs_file_write(ap, buf, 0, sizeof buf, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_file_read(ro, buf, -1, 16, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_file_read(ro, buf, 0, SIZE_MAX / 2, 1), -1);
    EXPECT_EQ(errno, EINVAL);
}

TEST_F(Handles, FuturesCompleteWithTheBytes) {
    small_chunks();
    const uint64_t n = 16 << 20, piece = 1 << 20;
    const std::string path = pattern_file("f.dat", n);
    phxfs_file_t fh = open_handle(path, O_RDWR);
    auto buf = host_buffer(n);
    std::vector<phxfs_future_t> fs(n / piece);
    for (size_t i = 0; i < fs.size(); ++i)
        ASSERT_EQ(phxfs_file_read_async(fh, buf.get(), i * piece, piece, i * piece, &fs[i]), 0)
            << phxfs_last_error();
    for (phxfs_future_t f : fs) {
        EXPECT_EQ(phxfs_future_wait(f, -1), static_cast<ssize_t>(piece)) << phxfs_last_error();
        EXPECT_EQ(phxfs_future_poll(f), 1);
        EXPECT_EQ(phxfs_future_wait(f, 0), static_cast<ssize_t>(piece)) << "same result again";
        phxfs_future_free(f);
    }
    EXPECT_EQ(first_mismatch_fast(buf.get(), n, 0), n);
    // Writes: the first MiB with another seed, then back by fd.
    fill_pattern_fast(buf.get(), piece, 0, 5);
    phxfs_future_t w = nullptr;
    ASSERT_EQ(phxfs_file_write_async(fh, buf.get(), 0, piece, 0, &w), 0);
    EXPECT_EQ(phxfs_future_wait(w, -1), static_cast<ssize_t>(piece));
    phxfs_future_free(w);
    std::vector<uint8_t> back(piece);
    ASSERT_EQ(::pread(fds_.back(), back.data(), piece, 0), static_cast<ssize_t>(piece));
    EXPECT_EQ(first_mismatch_fast(back.data(), piece, 0, 5), piece);
}

TEST_F(Handles, FutureErrorsAreTheCallsErrors) {
    const std::string path = pattern_file("e.dat", 4096);
    phxfs_file_t ro = open_handle(path, O_RDONLY);
    char buf[4096];
    phxfs_future_t f = nullptr;
    ASSERT_EQ(phxfs_file_write_async(ro, buf, 0, sizeof buf, 0, &f), 0);
    errno = 0;
    EXPECT_EQ(phxfs_future_wait(f, -1), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_NE(std::string(phxfs_last_error()).find("not open for writing"), std::string::npos)
        << phxfs_last_error();
    phxfs_future_free(f);
    EXPECT_EQ(phxfs_future_poll(nullptr), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_file_read_async(ro, buf, 0, sizeof buf, 0, nullptr), -1);
    EXPECT_EQ(errno, EINVAL);
    phxfs_future_free(nullptr); // a no-op, as free(NULL)
}

TEST_F(Handles, CppFileFutures) {
    const std::string path = pattern_file("cpp.dat", 1 << 20);
    phxfs::Device dev(0);
    phxfs::File f(path, O_RDONLY, dev);
    auto buf = host_buffer(1 << 20);
    phxfs::Future a = f.pread(buf.get(), 1 << 19, 0);
    phxfs::Future b = f.pread(buf.get() + (1 << 19), 1 << 19, 1 << 19);
    EXPECT_EQ(a.get() + b.get(), 1u << 20);
    EXPECT_TRUE(a.wait_for(0ns));
    EXPECT_EQ(first_mismatch_fast(buf.get(), 1 << 20, 0), 1u << 20);
    phxfs::Future w = f.pwrite(buf.get(), 4096, 0);
    try {
        w.get();
        ADD_FAILURE() << "a write on a read-only file completed";
    } catch (const phxfs::Error &e) {
        EXPECT_EQ(e.code().value(), EBADF) << e.what();
    }
}

// Batches: random small reads, every one checked, reaped in odd groups.
TEST_F(Handles, BatchOfManySmallReads) {
    const uint64_t n = 8 << 20;
    const std::string path = pattern_file("b.dat", n);
    phxfs_file_t fh = open_handle(path, O_RDONLY | O_DIRECT);
    constexpr unsigned kReqs = 4096, kSize = 4096;
    auto buf = host_buffer(uint64_t{kReqs} * kSize);
    std::mt19937_64 rng(7);
    std::vector<phxfs_io> ios(kReqs);
    std::vector<uint64_t> offs(kReqs);
    for (unsigned i = 0; i < kReqs; ++i) {
        offs[i] = rng() % (n - kSize); // unaligned too
        ios[i] = {fh,
                  PHXFS_OP_READ,
                  0,
                  buf.get(),
                  uint64_t{i} * kSize,
                  kSize,
                  offs[i],
                  reinterpret_cast<void *>(uintptr_t{i})};
    }
    phxfs_batch_t b = nullptr;
    ASSERT_EQ(phxfs_batch_create(&b, kReqs), 0);
    ASSERT_EQ(phxfs_batch_submit(b, ios.data(), kReqs), static_cast<int>(kReqs))
        << phxfs_last_error();
    std::vector<phxfs_completion> cs(100);
    std::set<uintptr_t> seen;
    while (seen.size() < kReqs) {
        const int got = phxfs_batch_reap(b, cs.data(), 1, 100, -1);
        ASSERT_GT(got, 0) << phxfs_last_error();
        for (int j = 0; j < got; ++j) {
            const auto i = reinterpret_cast<uintptr_t>(cs[j].user_data);
            EXPECT_TRUE(seen.insert(i).second) << "completion " << i << " twice";
            EXPECT_EQ(cs[j].status, PHXFS_IO_DONE) << cs[j].error;
            EXPECT_EQ(cs[j].result, kSize);
            EXPECT_EQ(first_mismatch(buf.get() + i * kSize, kSize, offs[i]), kSize) << i;
        }
    }
    EXPECT_EQ(phxfs_batch_reap(b, cs.data(), 0, 100, 0), 0) << "nothing more";
    EXPECT_EQ(phxfs_batch_destroy(b), 0);
}

// Small writes of a batch share lanes (write_many): every byte lands, on
// buffered and O_DIRECT fds, aligned or not.
TEST_F(Handles, BatchOfManySmallWrites) {
    small_chunks(4, 64 << 10);
    constexpr unsigned kReqs = 1000, kSize = 3000; // unaligned: edges through the twin
    for (int flags : {O_RDWR, O_RDWR | O_DIRECT}) {
        const std::string path = dir_.file(flags & O_DIRECT ? "wd.dat" : "wb.dat");
        phxfs_file_t fh = open_handle(path, flags);
        auto buf = host_buffer(uint64_t{kReqs} * kSize);
        fill_pattern_fast(buf.get(), uint64_t{kReqs} * kSize, 0, 3);
        std::vector<phxfs_io> ios(kReqs);
        for (unsigned i = 0; i < kReqs; ++i) // file order reversed: no two requests touch
            ios[i] = {fh,
                      PHXFS_OP_WRITE,
                      0,
                      buf.get(),
                      uint64_t{i} * kSize,
                      kSize,
                      uint64_t{kReqs - 1 - i} * kSize,
                      nullptr};
        phxfs::Batch b(kReqs);
        b.submit(ios.data(), kReqs);
        std::vector<phxfs_completion> cs(kReqs);
        ASSERT_EQ(b.reap(cs.data(), kReqs, kReqs, 30s), kReqs);
        for (const phxfs_completion &c : cs)
            ASSERT_EQ(c.result, kSize) << c.error;
        std::vector<uint8_t> back(kSize);
        const int fd = ::open(path.c_str(), O_RDONLY);
        for (unsigned i = 0; i < kReqs; ++i) {
            ASSERT_EQ(::pread(fd, back.data(), kSize, uint64_t{kReqs - 1 - i} * kSize), kSize);
            ASSERT_EQ(first_mismatch(back.data(), kSize, uint64_t{i} * kSize, 3), kSize) << i;
        }
        ::close(fd);
    }
}

// One bad request fails alone, saying why; the good ones around it complete.
TEST_F(Handles, BatchBadRequestsFailAlone) {
    const std::string path = pattern_file("bad.dat", 1 << 20);
    phxfs_file_t fh = open_handle(path, O_RDONLY);
    phxfs_file_t closed = nullptr;
    ASSERT_EQ(phxfs_file_open(&closed, 0, fds_.back()), 0);
    ASSERT_EQ(phxfs_file_close(closed), 0);
    auto buf = host_buffer(8 << 20);
    auto io = [&](phxfs_file_t f, uint32_t op, uint64_t n, uint64_t off, uintptr_t tag) {
        return phxfs_io{f, op, 0, buf.get(), tag * 65536, n, off, reinterpret_cast<void *>(tag)};
    };
    std::vector<phxfs_io> ios = {
        io(fh, PHXFS_OP_READ, 65536, 0, 0),
        io(closed, PHXFS_OP_READ, 4096, 0, 1),             // EBADF: closed handle
        io(fh, 7, 4096, 0, 2),                             // EINVAL: no such op
        io(fh, PHXFS_OP_WRITE, 4096, 0, 3),                // EBADF: read-only file
        io(fh, PHXFS_OP_READ, UINT64_MAX / 2, 1 << 30, 4), // EINVAL: range overflows
        io(fh, PHXFS_OP_READ, 65536, 65536, 5),
    };
    ios.push_back(ios[0]);
    ios.back().reserved = 1; // EINVAL
    ios.back().user_data = reinterpret_cast<void *>(uintptr_t{6});
    phxfs::Batch b(16);
    b.submit(ios.data(), static_cast<unsigned>(ios.size()));
    std::vector<phxfs_completion> cs(ios.size());
    ASSERT_EQ(b.reap(cs.data(), static_cast<unsigned>(ios.size()), 16, 10s), ios.size());
    const std::vector<std::pair<int, const char *>> want = {{0, ""},
                                                            {-EBADF, "not an open file handle"},
                                                            {-EINVAL, "neither read nor write"},
                                                            {-EBADF, "not open for writing"},
                                                            {-EINVAL, "overflows"},
                                                            {0, ""},
                                                            {-EINVAL, "reserved"}};
    for (const phxfs_completion &c : cs) {
        const auto tag = reinterpret_cast<uintptr_t>(c.user_data);
        ASSERT_LT(tag, want.size());
        if (want[tag].first == 0) {
            EXPECT_EQ(c.status, PHXFS_IO_DONE) << tag << ": " << c.error;
            EXPECT_EQ(c.result, 65536);
            EXPECT_EQ(first_mismatch(buf.get() + tag * 65536, 65536, ios[tag].f_offset), 65536u);
        } else {
            EXPECT_EQ(c.status, PHXFS_IO_FAILED) << tag;
            EXPECT_EQ(c.result, want[tag].first) << tag << ": " << c.error;
            EXPECT_NE(std::string(c.error).find(want[tag].second), std::string::npos)
                << tag << ": " << c.error;
        }
    }
}

TEST_F(Handles, BatchDepthTimeoutsAndArguments) {
    const std::string path = pattern_file("d.dat", 1 << 20);
    phxfs_file_t fh = open_handle(path, O_RDONLY);
    char buf[4 * 4096];
    phxfs_batch_t b = nullptr;
    errno = 0;
    EXPECT_EQ(phxfs_batch_create(&b, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    ASSERT_EQ(phxfs_batch_create(&b, 4), 0);
    std::vector<phxfs_io> ios(5, phxfs_io{fh, PHXFS_OP_READ, 0, buf, 0, 4096, 0, nullptr});
    for (unsigned i = 0; i < 5; ++i)
        ios[i].buf_offset = (i % 4) * 4096;
    EXPECT_EQ(phxfs_batch_submit(b, ios.data(), 5), -1) << "5 into a batch of 4";
    EXPECT_EQ(errno, EAGAIN);
    ASSERT_EQ(phxfs_batch_submit(b, ios.data(), 4), 4);
    EXPECT_EQ(phxfs_batch_submit(b, ios.data(), 1), -1) << "full until reaped";
    EXPECT_EQ(errno, EAGAIN);
    phxfs_completion cs[4];
    EXPECT_EQ(phxfs_batch_reap(b, cs, 4, 4, -1), 4);
    EXPECT_EQ(phxfs_batch_submit(b, ios.data(), 1), 1) << "room again";
    EXPECT_EQ(phxfs_batch_reap(b, cs, 1, 4, -1), 1);
    // Nothing in flight: a reap for one times out, empty-handed, in time.
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(phxfs_batch_reap(b, cs, 1, 4, 20'000'000), 0);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
    EXPECT_EQ(phxfs_batch_reap(b, cs, 2, 1, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_batch_reap(b, cs, 5, 5, 0), -1) << "more than the depth can ever give";
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_batch_reap(b, nullptr, 0, 4, 0), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_batch_submit(b, nullptr, 1), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_batch_submit(nullptr, ios.data(), 1), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_batch_destroy(b), 0);
}

// Reapers on several threads while another submits: every completion is
// taken exactly once, none is lost.
TEST_F(Handles, BatchReapedFromManyThreads) {
    const std::string path = pattern_file("m.dat", 1 << 20);
    phxfs_file_t fh = open_handle(path, O_RDONLY);
    constexpr unsigned kTotal = 20000, kDepth = 256;
    auto buf = host_buffer(kTotal * 512); // a place of its own per request
    phxfs::Batch b(kDepth);
    std::atomic<unsigned> reaped{0};
    std::vector<std::atomic<uint8_t>> seen(kTotal);
    std::atomic<bool> twice{false};
    std::vector<std::thread> reapers;
    for (int t = 0; t < 4; ++t)
        reapers.emplace_back([&] {
            phxfs_completion cs[32];
            while (reaped.load() < kTotal) {
                const unsigned got = b.reap(cs, 0, 32, 1ms);
                for (unsigned j = 0; j < got; ++j) {
                    const auto i = reinterpret_cast<uintptr_t>(cs[j].user_data);
                    if (seen[i].fetch_add(1) != 0 || cs[j].result != 512)
                        twice = true;
                }
                reaped += got;
            }
        });
    for (unsigned i = 0; i < kTotal;) {
        phxfs_io io{fh,
                    PHXFS_OP_READ,
                    0,
                    buf.get(),
                    (i % kDepth) * 512,
                    512,
                    (i * 512ull) % (1 << 20),
                    reinterpret_cast<void *>(uintptr_t{i})};
        try {
            b.submit(&io, 1);
            ++i;
        } catch (const phxfs::Error &e) {
            ASSERT_EQ(e.code().value(), EAGAIN) << e.what();
            std::this_thread::yield();
        }
    }
    for (auto &t : reapers)
        t.join();
    EXPECT_EQ(reaped.load(), kTotal);
    EXPECT_FALSE(twice.load()) << "a completion was reaped twice or came back wrong";
    for (unsigned i = 0; i < kTotal; ++i)
        ASSERT_EQ(seen[i].load(), 1) << i;
}

} // namespace
