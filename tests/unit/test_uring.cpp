// The io_uring ring of the direct path alone (src/engine/uring.hpp), on
// ordinary O_DIRECT files: hundreds of pieces through a ring of 128 (and of
// 3), short reads at end of file, bad pieces failing alone, a ring per
// thread and per process (a child of fork() makes its own), and the switch
// that turns io_uring off (depth 0), both ways.
#include "uring_util.hpp"

#include <dirent.h>
#include <sys/wait.h>

#include <cstdlib>
#include <thread>

using namespace phxtest;
namespace uring = phxfs::core::uring;
namespace core = phxfs::core;

namespace {

constexpr size_t kPieces = 600;

// The descriptors of this process that are io_uring rings.
std::vector<int> ring_fds() {
    std::vector<int> out;
    DIR *d = ::opendir("/proc/self/fd");
    if (!d)
        return out;
    while (dirent *e = ::readdir(d)) {
        char link[64] = {};
        const std::string path = std::string("/proc/self/fd/") + e->d_name;
        if (::readlink(path.c_str(), link, sizeof link - 1) > 0 &&
            std::string(link) == "anon_inode:[io_uring]")
            out.push_back(std::atoi(e->d_name));
    }
    ::closedir(d);
    return out;
}

using Ring = RingTest;

// 600 reads of 4 and 8 KiB at shuffled offsets, then the same bytes written
// to shuffled places of another file: through a ring of 128 and, refilled
// at every completion, one of 3.
TEST_F(Ring, SixHundredPiecesReadAndWritten) {
    for (unsigned d : {128u, 3u}) {
        SCOPED_TRACE("depth " + std::to_string(d));
        depth(d);
        const std::string tag = std::to_string(d);
        const int in = pattern(("in" + tag).c_str(), kPieces * kSlot, 5);
        auto buf = host_buffer(kPieces * kSlot);
        auto reads = shuffled_pieces(in, false, buf.get(), kPieces, 11);
        ASSERT_TRUE(uring::run(reads.data(), reads.size()));
        for (const Piece &p : reads) {
            ASSERT_EQ(p.outcome, Outcome::done) << std::strerror(p.err);
            ASSERT_EQ(p.got, p.n);
            ASSERT_EQ(first_mismatch_fast(p.buf, p.n, p.off, 5), p.n) << "read at " << p.off;
        }
        const int out = empty(("out" + tag).c_str());
        auto writes = shuffled_pieces(out, true, buf.get(), kPieces, 12);
        for (size_t i = 0; i < kPieces; ++i)
            writes[i].n = reads[i].n; // what the read brought
        ASSERT_TRUE(uring::run(writes.data(), writes.size()));
        const int back = ::open(dir_.file("out" + tag).c_str(), O_RDONLY);
        ASSERT_GE(back, 0);
        std::vector<uint8_t> b(kSlot);
        for (size_t i = 0; i < kPieces; ++i) {
            const Piece &w = writes[i];
            ASSERT_EQ(w.outcome, Outcome::done) << std::strerror(w.err);
            ASSERT_EQ(w.got, w.n);
            ASSERT_EQ(::pread(back, b.data(), w.n, w.off), static_cast<ssize_t>(w.n));
            ASSERT_EQ(first_mismatch(b.data(), w.n, reads[i].off, 5), w.n) << "write at " << w.off;
        }
        ::close(back);
    }
}

// A file of 10000 bytes: reads that reach past its end are short, as
// pread_full's are (the rest asked again and found at end of file).
TEST_F(Ring, ShortAtEndOfFile) {
    const int fd = pattern("odd", 10000, 6);
    auto buf = host_buffer(4 * kSlot);
    char *b = reinterpret_cast<char *>(buf.get());
    std::vector<Piece> p(3);
    p[0] = {fd, false, b, 16384, 0};
    p[1] = {fd, false, b + 16384, 8192, 8192};
    p[2] = {fd, false, b + 24576, 4096, 16384};
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    const size_t want[] = {10000, 10000 - 8192, 0};
    for (size_t i = 0; i < p.size(); ++i) {
        EXPECT_EQ(p[i].outcome, Outcome::done) << i << ": " << std::strerror(p[i].err);
        EXPECT_EQ(p[i].got, want[i]) << i;
        EXPECT_EQ(first_mismatch(p[i].buf, p[i].got, p[i].off, 6), p[i].got) << i;
    }
    EXPECT_EQ(buf[24576], 0xAA) << "nothing read past the end";
}

// A piece on a descriptor that is not open, a write on a read-only one and
// a read at an offset O_DIRECT refuses fail, each alone, with their errno;
// the others land.
TEST_F(Ring, BadPiecesFailAlone) {
    constexpr size_t kN = 64;
    auto p = reads("data", kN, 7);
    p[10].fd = 1 << 20;
    p[20].write = true;
    p[30].off += 1;
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    EXPECT_EQ(p[10].outcome, Outcome::failed);
    EXPECT_EQ(p[10].err, EBADF);
    EXPECT_EQ(p[20].outcome, Outcome::failed);
    EXPECT_EQ(p[20].err, EBADF);
    EXPECT_EQ(p[30].outcome, Outcome::failed);
    EXPECT_EQ(p[30].err, EINVAL);
    for (size_t i = 0; i < kN; ++i) {
        if (i == 10 || i == 20 || i == 30)
            continue;
        ASSERT_EQ(p[i].outcome, Outcome::done) << i << ": " << std::strerror(p[i].err);
        ASSERT_EQ(first_mismatch(p[i].buf, p[i].n, p[i].off, 7), p[i].n) << i;
    }
    EXPECT_EQ(count_of(p, Outcome::done), kN - 3);
}

// Each thread has a ring of its own, made on first use and closed when the
// thread ends.
TEST_F(Ring, OneRingPerThreadGoneWithIt) {
    constexpr size_t kN = 32;
    auto p = reads("data", kN, 8);
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    const size_t mine = ring_fds().size();
    ASSERT_GE(mine, 1u);
    size_t during = 0;
    bool ran = false;
    std::thread t([&] {
        auto q = shuffled_pieces(fd_, false, buf_.get(), kN, 15);
        ran = uring::run(q.data(), q.size()) && count_of(q, Outcome::done) == kN;
        during = ring_fds().size();
    });
    t.join();
    EXPECT_TRUE(ran);
    EXPECT_EQ(during, mine + 1);
    EXPECT_EQ(ring_fds().size(), mine);
}

// A child of fork() finds none of the parent's rings open, makes its own and
// uses it; the parent's ring works on after the child is gone.
TEST_F(Ring, ForkedChildMakesARingOfItsOwn) {
    constexpr size_t kN = 64;
    auto p = reads("data", kN, 9);
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    ASSERT_FALSE(ring_fds().empty());
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::alarm(20);
        if (!ring_fds().empty())
            ::_exit(2); // the parent's ring is open here
        std::memset(buf_.get(), 0, kN * kSlot);
        if (!uring::run(p.data(), p.size()))
            ::_exit(3);
        for (const Piece &x : p)
            if (x.outcome != Outcome::done || first_mismatch(x.buf, x.n, x.off, 9) != x.n)
                ::_exit(4);
        ::_exit(ring_fds().size() == 1 ? 0 : 5);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "2: parent's ring open in the child, 3: no ring, "
                                         "4: a piece failed, 5: not exactly one ring";
    std::memset(buf_.get(), 0, kN * kSlot);
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    EXPECT_EQ(count_of(p, Outcome::done), kN);
    EXPECT_EQ(first_mismatch(p[0].buf, p[0].n, p[0].off, 9), p[0].n);
}

// A program that closes every descriptor closes the ring's too, and by the
// next run its number may be another file's: the ring is found broken
// before it took anything (every piece failed, none in doubt, for its caller
// to run alone), the other file stays open, and the run after makes a new
// ring.
TEST_F(Ring, DescriptorClosedUnderItIsNotClosedAgain) {
    constexpr size_t kN = 8;
    auto p = reads("data", kN, 30);
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    const std::vector<int> rings = ring_fds();
    ASSERT_EQ(rings.size(), 1u);
    ASSERT_EQ(::close(rings[0]), 0);
    const int other = ::open("/dev/null", O_RDONLY);
    ASSERT_EQ(other, rings[0]) << "the lowest free number";
    std::memset(buf_.get(), 0xAA, kN * kSlot);
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    EXPECT_EQ(count_of(p, Outcome::failed), kN);
    EXPECT_EQ(p[0].err, EOPNOTSUPP) << std::strerror(p[0].err);
    EXPECT_EQ(buf_[0], 0xAA);
    EXPECT_GE(::fcntl(other, F_GETFD), 0) << "the other file's descriptor was closed";
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    EXPECT_EQ(count_of(p, Outcome::done), kN);
    ::close(other);
}

// Depth 0 turns io_uring off: run() declines and moves nothing (its caller
// then runs each request alone, as before io_uring); back on, it runs.
TEST_F(Ring, DepthZeroTurnsItOffAndBackOn) {
    constexpr size_t kN = 16;
    const int fd = empty("w");
    auto buf = host_buffer(kN * kSlot);
    fill_pattern_fast(buf.get(), kN * kSlot, 0, 10);
    auto p = shuffled_pieces(fd, true, buf.get(), kN, 17);
    depth(0);
    EXPECT_FALSE(uring::run(p.data(), p.size()));
    EXPECT_EQ(count_of(p, Outcome::not_run), kN);
    struct stat st {};
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, 0) << "nothing written with io_uring off";
    depth(128);
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    EXPECT_EQ(count_of(p, Outcome::done), kN);
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, static_cast<off_t>(kN * kSlot));
}

// phxfs_set_config, whose struct does not carry the depth
// (PHXFS_URING_DEPTH, test_env.cpp), leaves it as it is.
TEST_F(Ring, SetConfigKeepsTheDepth) {
    depth(7);
    phxfs_config c{};
    c.size = sizeof c;
    ASSERT_EQ(phxfs_get_config(&c), 0);
    ASSERT_EQ(phxfs_set_config(&c), 0) << phxfs_last_error();
    EXPECT_EQ(core::config().uring_depth, 7u);
}

} // namespace
