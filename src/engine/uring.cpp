#include "engine/uring.hpp"

#include "core/config.hpp"
#include "core/fault.hpp"

#ifdef PHXFS_HAVE_URING
#include <liburing.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

namespace phxfs::core::uring {

#ifdef PHXFS_HAVE_URING

namespace {

// The rings of this process by file descriptor (+1; 0: a free place), for a
// child of fork() to close: a fixed table of atomics, since fork() may come
// at any moment and no lock may be held across it. A ring is in the table
// only while its descriptor is open. One made while the table is full (or
// in the moment between io_uring_setup and taking its place) stays open in
// a child that does not exec, unused (ring descriptors are O_CLOEXEC).
constexpr size_t kMaxRings = 1024;
std::atomic<int> ring_fds[kMaxRings];

int remember(int fd) {
    for (size_t i = 0; i < kMaxRings; ++i) {
        int free = 0;
        if (ring_fds[i].compare_exchange_strong(free, fd + 1))
            return static_cast<int>(i);
    }
    return -1;
}

// The process in which io_uring_setup failed with ENOSYS or EPERM: the
// kernel has no io_uring or a policy refuses it, and no thread of this
// process asks again (a child of fork() does, once).
std::atomic<pid_t> refused_in{0};

class Ring {
  public:
    Ring() = default;
    Ring(const Ring &) = delete;
    Ring &operator=(const Ring &) = delete;
    ~Ring() { close(); }

    // Whether the ring is there with `depth` entries, made now if need be.
    bool ready(unsigned depth);
    // Runs pieces [0, n) to their outcomes (uring::run).
    void run(Piece *pieces, size_t n);

  private:
    void close();
    // Queues the rest of piece i; false (and the piece failed) where the
    // submission queue has no room, which the depth rules out.
    bool queue(Piece *pieces, size_t i);
    // Takes the completions there are; returns how many pieces left flight
    // (done or failed). broken: the ring's error when no piece may be
    // queued again (its rest then fails), else 0.
    unsigned reap(Piece *pieces, int broken);
    // After io_uring_enter failed with err for good: pieces [0, next) were
    // queued, the rest never were. Waits for what the kernel took (drain),
    // then closes the ring.
    void broke(Piece *pieces, size_t n, size_t next, int err);
    // Waits, submitting nothing, until the pieces of [0, next) the kernel
    // took have completed, or waiting fails.
    void drain(Piece *pieces, size_t next, int err);

    io_uring ring_{};
    pid_t pid_ = 0; // the process that made it; 0: no ring
    unsigned depth_ = 0;
    int slot_ = -1; // its place in ring_fds, -1: none
};

thread_local Ring this_thread_ring;

bool Ring::ready(unsigned depth) {
    const pid_t me = ::getpid();
    if (pid_ == me && depth_ == depth)
        return true;
    close(); // none, the parent's, or of another depth (and idle: between runs)
    if (depth == 0 || refused_in.load(std::memory_order_relaxed) == me)
        return false;
    int r;
    if (auto f = fault::at(fault::Site::uring_setup); f && f->err)
        r = -f->err;
    else
        r = io_uring_queue_init(depth, &ring_, 0);
    if (r < 0) {
        if (r == -ENOSYS || r == -EPERM)
            refused_in.store(me, std::memory_order_relaxed);
        ring_ = io_uring{};
        return false;
    }
    // A child of fork() does not inherit the ring's memory; where this fails
    // it does, and leaves it alone.
    (void)io_uring_ring_dontfork(&ring_);
    pid_ = me;
    depth_ = depth;
    slot_ = remember(ring_.ring_fd);
    return true;
}

void Ring::close() {
    if (!pid_)
        return;
    if (pid_ == ::getpid()) {
        if (slot_ >= 0)
            ring_fds[slot_].store(0);
        io_uring_queue_exit(&ring_);
    } else if (slot_ < 0) {
        // The parent's, in a child of fork(): its memory is not ours to
        // unmap; its descriptor, if not in the table, is ours to close.
        ::close(ring_.ring_fd);
    }
    ring_ = io_uring{};
    pid_ = 0;
    depth_ = 0;
    slot_ = -1;
}

bool Ring::queue(Piece *pieces, size_t i) {
    Piece &p = pieces[i];
    io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
        p.outcome = Piece::Outcome::failed;
        p.err = EBUSY;
        return false;
    }
    const auto len = static_cast<unsigned>(p.n - p.got);
    if (p.write)
        io_uring_prep_write(sqe, p.fd, p.buf + p.got, len, p.off + p.got);
    else
        io_uring_prep_read(sqe, p.fd, p.buf + p.got, len, p.off + p.got);
    io_uring_sqe_set_data64(sqe, i);
    return true;
}

unsigned Ring::reap(Piece *pieces, int broken) {
    unsigned head, seen = 0, left = 0;
    io_uring_cqe *cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        const size_t i = io_uring_cqe_get_data64(cqe);
        Piece &p = pieces[i];
        int res = cqe->res;
        if (auto f = fault::at(fault::Site::uring_cqe)) {
            if (f->err)
                res = -f->err;
            else if (res > 0 && f->max_bytes < static_cast<size_t>(res))
                res = static_cast<int>(f->max_bytes);
        }
        // As pread_full and pwrite_full: on for the rest after a short
        // transfer or EINTR; a read that gets nothing is at end of file, a
        // write that moves nothing failed.
        if (res > 0)
            p.got += static_cast<size_t>(res);
        if ((res > 0 && p.got < p.n) || res == -EINTR) {
            if (!broken && queue(pieces, i))
                continue; // still in flight
            ++left;
            if (broken) { // nothing of it in flight: it may run again
                p.outcome = Piece::Outcome::failed;
                p.err = broken;
            }
            continue;
        }
        ++left;
        if (res > 0 || (res == 0 && !p.write)) {
            p.outcome = Piece::Outcome::done;
        } else {
            p.outcome = Piece::Outcome::failed;
            p.err = res == 0 ? EIO : -res;
        }
    }
    io_uring_cq_advance(&ring_, seen);
    return left;
}

void Ring::broke(Piece *pieces, size_t n, size_t next, int err) {
    reap(pieces, err); // what completed counts
    // What the kernel had not taken from the submission queue never ran.
    for (unsigned k = *ring_.sq.khead; k != ring_.sq.sqe_tail; ++k) {
        Piece &p = pieces[ring_.sq.sqes[k & ring_.sq.ring_mask].user_data];
        p.outcome = Piece::Outcome::failed;
        p.err = err;
    }
    // EBADF or EOPNOTSUPP: the descriptor is no longer this ring's (closed
    // under us, say by a program closing every descriptor; its number may
    // be another file's by now), so it is neither ours to wait on nor to
    // close. The ring's memory still is.
    if (err == EBADF || err == EOPNOTSUPP)
        ring_.ring_fd = -1;
    else
        drain(pieces, next, err);
    // What is still in flight (the ring could not be waited on) may land
    // after its caller was told: in doubt.
    for (size_t i = 0; i < n; ++i) {
        Piece &p = pieces[i];
        if (p.outcome != Piece::Outcome::not_run)
            continue;
        p.outcome = i < next ? Piece::Outcome::in_doubt : Piece::Outcome::failed;
        p.err = err;
    }
    close();
}

// Closing the ring would not stop what the kernel took: the kernel would
// finish it in the background, after its caller had been told it failed and
// had perhaps deregistered the memory or closed the file. So the transfers
// are waited for first. They are O_DIRECT transfers of files and block
// devices, which complete. Nothing more is submitted: what was queued and
// not taken stays untaken (io_uring_wait_cqe enters the kernel to wait
// only).
void Ring::drain(Piece *pieces, size_t next, int err) {
    size_t flying = 0;
    for (size_t i = 0; i < next; ++i)
        flying += pieces[i].outcome == Piece::Outcome::not_run ? 1 : 0;
    while (flying) {
        io_uring_cqe *cqe = nullptr;
        const int r = io_uring_wait_cqe(&ring_, &cqe);
        if (r == -EINTR)
            continue;
        if (r < 0)
            return; // what is left is in doubt
        flying -= std::min<size_t>(flying, reap(pieces, err));
    }
}

void Ring::run(Piece *pieces, size_t n) {
    size_t next = 0;     // the first piece never queued
    unsigned flying = 0; // pieces queued or in the kernel
    while (next < n || flying) {
        for (; next < n && flying < depth_; ++next)
            flying += queue(pieces, next) ? 1 : 0;
        if (!flying)
            break;
        int r;
        if (auto f = fault::at(fault::Site::uring_enter); f && f->err) {
            r = -f->err;
        } else if (auto w = fault::at(fault::Site::uring_wait); w && w->err) {
            (void)io_uring_submit(&ring_);
            r = -w->err;
        } else {
            r = io_uring_submit_and_wait(&ring_, 1);
        }
        if (r == -EINTR)
            continue;
        // Out of kernel memory or completion space: wait for what is in
        // flight, if anything is (what is queued but not taken is not).
        if ((r == -EAGAIN || r == -EBUSY) && flying > io_uring_sq_ready(&ring_)) {
            do {
                io_uring_cqe *cqe;
                r = io_uring_wait_cqe(&ring_, &cqe);
            } while (r == -EINTR);
        }
        if (r < 0) {
            broke(pieces, n, next, -r);
            return;
        }
        flying -= reap(pieces, 0);
    }
}

} // namespace

bool run(Piece *pieces, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        pieces[i].outcome = Piece::Outcome::not_run;
        pieces[i].err = 0;
        pieces[i].got = 0;
    }
    if (!this_thread_ring.ready(config().uring_depth))
        return false;
    this_thread_ring.run(pieces, n);
    return true;
}

void after_fork_child() {
    for (std::atomic<int> &fd : ring_fds)
        if (const int v = fd.exchange(0))
            ::close(v - 1);
}

#else // no liburing: every request runs as it did before io_uring

bool run(Piece *pieces, size_t n) {
    for (size_t i = 0; i < n; ++i)
        pieces[i].outcome = Piece::Outcome::not_run;
    return false;
}

void after_fork_child() {}

#endif

} // namespace phxfs::core::uring
