// io_uring for the direct path: a group's small O_DIRECT transfers on mapped
// device memory, many in flight at once on one ring per thread, instead of
// one pread or pwrite after another.
//
// Optional: built only with liburing (linked statically where its archive
// is), used only while config().uring_depth > 0 (PHXFS_URING_DEPTH) and
// io_uring_setup works (it fails with ENOSYS or EPERM where the kernel lacks
// io_uring or a container's seccomp or kernel.io_uring_disabled refuses
// it). Where it cannot run, run() says so and its caller does as it would
// have without it.
//
// A thread's ring is made on its first use, kept for the next group and
// closed when the thread ends; a child of fork() makes its own (the parent's
// rings are the parent's: their mappings are not inherited and their file
// descriptors are closed in the child).
#pragma once

#include <cstddef>
#include <cstdint>

namespace phxfs::core::uring {

// One whole transfer: O_DIRECT between fd and buf, as pread_full or
// pwrite_full would do it. The caller's array holds the pieces; run() uses
// no other memory per piece.
struct Piece {
    enum class Outcome : uint8_t {
        not_run,  // no ring: run() returned false
        done,     // got bytes moved (short only for a read at end of file)
        failed,   // err: nothing of it is in flight; run it again without the ring
        in_doubt, // the ring broke while it was in flight: it may still land
    };
    int fd = -1;
    bool write = false;
    char *buf = nullptr;
    size_t n = 0; // > 0, at most UINT32_MAX
    uint64_t off = 0;
    // The outcome (run() sets them):
    Outcome outcome = Outcome::not_run;
    int err = 0;    // failed: the errno of the failure (EAGAIN, EBADF, EINVAL, ...), or
                    // of the ring where it broke before the piece was submitted;
                    // in_doubt: the ring's error
    size_t got = 0; // bytes known to have moved
};

// Runs the pieces on this thread's ring with at most config().uring_depth in
// flight: short transfers and EINTR go on for the remainder, anything else
// fails the piece alone. Returns false, touching nothing, where there is no
// ring (io_uring off, not built in, or refused); else every piece is done,
// failed or in doubt. A ring that breaks (io_uring_enter failing for good)
// waits for what the kernel took, then closes: what it had not taken fails,
// what it had taken completes (done, or failed as any piece). In doubt
// (still in flight, may land later) is only what could not be waited for:
// the ring's descriptor closed under it, or waiting failing too. The next
// call makes a new ring.
bool run(Piece *pieces, size_t n);

// Whether run() can use a ring on this thread now (makes it if need be).
bool available();

// In a child of fork(): the parent's rings are closed, never used (fork.hpp).
void after_fork_child();

} // namespace phxfs::core::uring
