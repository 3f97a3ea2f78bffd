// One read or write once its buffer and file are known: which bytes go by
// the direct path and which through the compat engine, running both,
// counting them, and the path trace's line.
#pragma once

#include "core/device.hpp"
#include "engine/fileio.hpp"

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

namespace phxfs::core {

struct Request {
    bool write = false;
    int device_id = 0;
    File &file;
    const FileInfo &info; // the file as this request sees it (File::for_request)
    Resolved where;       // the buffer
    size_t n = 0;         // bytes asked for, n > 0
    uint64_t off = 0;
};

// A request of a group (run_group, Device::io_group), and what became of it.
struct GroupRequest {
    bool write = false;
    File *file = nullptr;
    char *base = nullptr; // the caller's buffer pointer (requests may share it)
    char *buf = nullptr;  // where this request's bytes are: base + its offset
    size_t n = 0;
    uint64_t off = 0;
    // Filled in by Device::io_group:
    RegistrationUse use; // the registration holding [buf, buf + n), if any
    FileInfo info;
    Resolved where;
    // The outcome: decided (done, or error set) and the bytes moved.
    bool done = false;
    size_t got = 0;
    std::exception_ptr error;
};

// Runs the requests of a group on session s: those that go all through
// staging, in pieces of at most a staging buffer, share the lanes and have
// their copies queued in groups (CompatEngine::read_many, write_many); small
// ones that go direct whole share this thread's io_uring ring; the others
// run as run_request runs them. Each completes alone: got, or error.
void run_group(Session &s, Stats &stats, int device_id, GroupRequest *reqs, size_t n);

// Throws EINVAL when a request's file range overflows off_t or its length
// a ssize_t result.
void check_io_range(uint64_t buf_offset, uint64_t nbyte, uint64_t f_offset);

// Runs req on session s and counts it in stats; returns the bytes moved
// (short only at end of file), or throws.
size_t run_request(Session &s, Stats &stats, const Request &req);

// "read dev 0 fd 5 4096 B at 0": how the path trace names a request.
std::string request_name(bool write, int device_id, int fd, size_t n, uint64_t off);

} // namespace phxfs::core
