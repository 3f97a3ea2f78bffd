// Fault injection for tests: chosen failures where the I/O and memory layers
// meet the kernel and the GPU (short transfers, EINTR, EAGAIN, EIO, ENOSPC,
// failed reopens, staging allocations, stream creations and copies, io_uring
// rings that cannot be made or break, and delays that hold a request in
// flight).
//
// Compiled in only with PHXFS_FAULT_INJECTION, which only the test library
// phxfs_fault defines; in the libraries users get, at() is a constant that
// the compiler removes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace phxfs::core::fault {

enum class Site : unsigned {
    pread,         // pread(2) in every read path
    pwrite,        // pwrite(2) in every write path
    reopen,        // opening the file's O_DIRECT or buffered twin
    staging_alloc, // allocating a lane's staging memory
    stream_create, // creating a lane's copy stream
    copy,          // a copy between staging and the buffer
    dio_align,     // the file's direct-I/O alignment statx reports: max_bytes
    uring_setup,   // making a thread's io_uring ring: fails with err
    uring_enter,   // io_uring_enter submitting and waiting: fails with err
    uring_wait,    // the same, failing with err once what was queued is submitted
    uring_cqe,     // an io_uring completion: its result becomes -err, or at most max_bytes
    handle_use,    // a call's hold on its file handle, taken: delay_ms before the call goes on
    count,
};

struct Fault {
    int err = 0;                 // fail with this errno; 0: do not fail
    size_t max_bytes = SIZE_MAX; // pread/pwrite: move at most this much (err == 0)
    unsigned delay_ms = 0;       // sleep this long first
};

#ifdef PHXFS_FAULT_INJECTION
// Gives f to the calls of site after the first `skip`, `times` of them
// (0: every one), replacing what was armed there.
void arm(Site site, Fault f, unsigned skip = 0, unsigned times = 1);
// Disarms every site and zeroes the hit counts.
void disarm();
// How many calls of site got their fault.
unsigned hits(Site site);
// At the site: the fault to apply now, if any (after its delay).
std::optional<Fault> at(Site site);
#else
constexpr std::optional<Fault> at(Site) {
    return std::nullopt;
}
#endif

} // namespace phxfs::core::fault
