// The io_uring ring under injected failures (src/core/fault.hpp): a ring that
// cannot be made, short and interrupted completions, a failed completion,
// and a ring that breaks with pieces in flight. What never ran may run again;
// what the kernel took is waited for before the ring goes.
#include "core/fault.hpp"
#include "uring_util.hpp"

#include <sys/wait.h>

#include <chrono>
#include <thread>
#include <vector>

using namespace phxtest;
namespace uring = phxfs::core::uring;
namespace fault = phxfs::core::fault;
using fault::Site;

namespace {

class RingFaults : public RingTest {
  protected:
    void TearDown() override {
        fault::disarm();
        RingTest::TearDown();
    }
};

// io_uring_setup failing (ENOMEM here): run() declines and moves nothing, and
// tries again next time. ENOSYS or EPERM (no io_uring, or a policy against
// it) is for good in that process: checked in a child of fork().
TEST_F(RingFaults, NoRingRunsNothing) {
    constexpr size_t kN = 8;
    auto p = reads("data", kN, 20);
    std::thread([&] { // a thread with no ring yet
        fault::arm(Site::uring_setup, {ENOMEM});
        EXPECT_FALSE(uring::run(p.data(), p.size()));
        EXPECT_EQ(count_of(p, Outcome::not_run), kN);
        EXPECT_EQ(buf_[0], 0xAA);
        EXPECT_TRUE(uring::run(p.data(), p.size()));
        EXPECT_EQ(count_of(p, Outcome::done), kN);
    })
        .join();
    EXPECT_EQ(fault::hits(Site::uring_setup), 1u);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::alarm(20);
        fault::arm(Site::uring_setup, {ENOSYS});
        if (uring::run(p.data(), p.size()))
            ::_exit(2);
        if (uring::run(p.data(), p.size()) || fault::hits(Site::uring_setup) != 1)
            ::_exit(3); // asked again
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "2: ran without a ring, 3: io_uring asked again";
    EXPECT_TRUE(uring::run(p.data(), p.size())) << "the parent is not refused";
}

// Completions short by half and interrupted ones go on for the rest, reads
// and writes: every byte lands once all is done.
TEST_F(RingFaults, ShortAndInterruptedCompletionsGoOn) {
    constexpr size_t kN = 64;
    const int in = pattern("in", kN * kSlot, 22);
    const int out = empty("out");
    auto buf = host_buffer(kN * kSlot);
    auto reads = shuffled_pieces(in, false, buf.get(), kN, 23);
    for (Piece &x : reads)
        x.n = kSlot;
    fault::arm(Site::uring_cqe, {0, 4096}, 0, 0); // every completion at most 4 KiB
    ASSERT_TRUE(uring::run(reads.data(), reads.size()));
    EXPECT_EQ(fault::hits(Site::uring_cqe), 2 * kN);
    for (const Piece &x : reads) {
        ASSERT_EQ(x.outcome, Outcome::done) << std::strerror(x.err);
        ASSERT_EQ(x.got, kSlot);
        ASSERT_EQ(first_mismatch(x.buf, x.n, x.off, 22), x.n);
    }
    auto writes = shuffled_pieces(out, true, buf.get(), kN, 24);
    for (size_t i = 0; i < kN; ++i)
        writes[i].n = kSlot;
    fault::arm(Site::uring_cqe, {EINTR}, 0, 20);
    ASSERT_TRUE(uring::run(writes.data(), writes.size()));
    EXPECT_EQ(fault::hits(Site::uring_cqe), 20u);
    EXPECT_EQ(count_of(writes, Outcome::done), kN);
    const int back = ::open(dir_.file("out").c_str(), O_RDONLY);
    std::vector<uint8_t> b(kSlot);
    for (size_t i = 0; i < kN; ++i) {
        ASSERT_EQ(::pread(back, b.data(), kSlot, writes[i].off), static_cast<ssize_t>(kSlot));
        ASSERT_EQ(first_mismatch(b.data(), kSlot, reads[i].off, 22), kSlot) << i;
    }
    ::close(back);
}

// One completion failing (EAGAIN, as an O_NONBLOCK file gives): that piece
// fails alone, with nothing of it in flight, for its caller to run again.
TEST_F(RingFaults, FailedCompletionFailsItsPieceAlone) {
    constexpr size_t kN = 48;
    auto p = reads("data", kN, 25);
    fault::arm(Site::uring_cqe, {EAGAIN}, 5, 1);
    ASSERT_TRUE(uring::run(p.data(), p.size()));
    EXPECT_EQ(count_of(p, Outcome::done), kN - 1);
    ASSERT_EQ(count_of(p, Outcome::failed), 1u);
    for (const Piece &x : p) {
        if (x.outcome == Outcome::failed) {
            EXPECT_EQ(x.err, EAGAIN);
        }
    }
}

// The ring breaks: io_uring_enter fails (ENOMEM) before it submits (the
// second call: pieces were queued after the first completions) or once it
// has (the first call), with a read of an empty pipe and file reads in
// flight. What the kernel took is waited for before the ring goes: the pipe
// read ends when a writer fills the pipe a moment later, and nothing is in
// doubt. What the kernel had not taken and what was never queued failed,
// untouched; what completed counts. The next run makes a new ring.
TEST_F(RingFaults, BrokenRingWaitsForWhatItHad) {
    constexpr size_t kN = 40, kDepth = 16;
    depth(kDepth);
    for (const Site site : {Site::uring_enter, Site::uring_wait}) {
        const bool after_submit = site == Site::uring_wait;
        SCOPED_TRACE(after_submit ? "failing after submitting" : "failing before submitting");
        auto p = reads(after_submit ? "wait" : "enter", kN, 27);
        int pipe_fds[2];
        ASSERT_EQ(::pipe(pipe_fds), 0);
        p[0].fd = pipe_fds[0];
        p[0].off = UINT64_MAX; // -1: a pipe has no offsets
        const std::vector<char> fill(p[0].n, 'P');
        std::thread writer([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            EXPECT_EQ(::write(pipe_fds[1], fill.data(), fill.size()),
                      static_cast<ssize_t>(fill.size()));
        });
        const auto t0 = std::chrono::steady_clock::now();
        fault::arm(site, {ENOMEM}, after_submit ? 0 : 1, 1);
        ASSERT_TRUE(uring::run(p.data(), p.size()));
        const auto took = std::chrono::steady_clock::now() - t0;
        writer.join();
        EXPECT_EQ(fault::hits(site), 1u);
        EXPECT_GE(took, std::chrono::milliseconds(150)) << "the ring went before the pipe read";
        // The pipe read took what the writer gave: whole, or short and then
        // failed with nothing of it in flight.
        EXPECT_GT(p[0].got, 0u);
        if (p[0].outcome == Outcome::failed)
            EXPECT_EQ(p[0].err, ENOMEM);
        else
            EXPECT_EQ(p[0].outcome, Outcome::done);
        EXPECT_EQ(count_of(p, Outcome::in_doubt), 0u);
        EXPECT_EQ(count_of(p, Outcome::not_run), 0u);
        // Pieces 16.. were queued after the first completions (and not
        // taken) or never: the kernel never had them. Pieces 1..15 it had
        // are done; the pipe read is done or failed.
        const size_t pipe_failed = p[0].outcome == Outcome::failed ? 1 : 0;
        EXPECT_EQ(count_of(p, Outcome::failed), kN - kDepth + pipe_failed);
        EXPECT_EQ(count_of(p, Outcome::done), kDepth - pipe_failed);
        for (size_t i = 1; i < kN; ++i) {
            const Piece &x = p[i];
            if (x.outcome == Outcome::failed) {
                EXPECT_EQ(x.err, ENOMEM) << i;
                EXPECT_GE(i, kDepth) << "piece " << i << " was taken";
                EXPECT_EQ(x.buf[0], static_cast<char>(0xAA)) << "failed piece " << i << " ran";
            } else {
                EXPECT_EQ(x.outcome, Outcome::done) << i;
                EXPECT_EQ(first_mismatch(x.buf, x.n, x.off, 27), x.n) << i;
            }
        }
        std::printf("done %zu, in doubt %zu, failed %zu\n", count_of(p, Outcome::done),
                    count_of(p, Outcome::in_doubt), count_of(p, Outcome::failed));
        auto q = shuffled_pieces(fd_, false, buf_.get(), kN, 29);
        ASSERT_TRUE(uring::run(q.data(), q.size())) << "a new ring";
        EXPECT_EQ(count_of(q, Outcome::done), kN);
        ::close(pipe_fds[0]);
        ::close(pipe_fds[1]);
        fault::disarm();
    }
}

} // namespace
