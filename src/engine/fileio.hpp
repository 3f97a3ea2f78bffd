// File-side helpers shared by the I/O paths: what an fd allows, full
// positional reads and writes, and an O_DIRECT or buffered twin of an fd.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace phxfs::core {

// An owned file descriptor.
class UniqueFd {
  public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    UniqueFd(UniqueFd &&o) noexcept : fd_(o.release()) {}
    UniqueFd &operator=(UniqueFd &&o) noexcept;
    UniqueFd(const UniqueFd &) = delete;
    UniqueFd &operator=(const UniqueFd &) = delete;
    ~UniqueFd() { reset(); }
    int get() const { return fd_; }
    int release() { return std::exchange(fd_, -1); }
    void reset();
    explicit operator bool() const { return fd_ >= 0; }

  private:
    int fd_ = -1;
};

struct FileInfo {
    int fd = -1;
    bool readable = false, writable = false;
    bool direct = false;  // opened with O_DIRECT
    bool append = false;  // opened with O_APPEND
    bool regular = false; // a regular file (its size may change)
    // Bytes in the file or block device; nullopt for other files.
    std::optional<uint64_t> size;
    // What O_DIRECT needs on this file, from statx(STATX_DIOALIGN) where the
    // kernel and file system report it (6.1+), else the 4 KiB every Linux
    // storage stack takes: file offsets and lengths multiples of
    // dio_offset_align (0: the file has no direct I/O), buffer addresses of
    // dio_mem_align.
    uint32_t dio_offset_align = 4096, dio_mem_align = 4096;

    // Whether 4 KiB-aligned O_DIRECT I/O works on this fd, as the compat
    // engine does it (else it goes through the file without O_DIRECT).
    bool direct_in_4k() const {
        return direct && dio_offset_align && 4096 % dio_offset_align == 0 &&
               4096 % dio_mem_align == 0;
    }
};

// Inspects fd: throws EBADF for a closed fd, ESPIPE for pipes and sockets.
FileInfo inspect_fd(int fd);
// Throws EBADF when the file is not open for the operation, EINVAL for an
// O_APPEND fd on write (pwrite would ignore the offset).
void check_access(const FileInfo &fi, bool for_write);
// The size of a regular file now (it may have grown since inspect_fd).
void refresh_size(FileInfo &fi);

// Reads until n bytes or end of file; returns the bytes read. Throws on error.
size_t pread_full(int fd, void *buf, size_t n, uint64_t off);
// Writes all n bytes or throws (ENOSPC, EIO, ...).
void pwrite_full(int fd, const void *buf, size_t n, uint64_t off);

// Opens the file behind fd again with O_DIRECT set or cleared (through
// /proc/self/fd), keeping its access mode and durability flags. Throws on
// failure.
UniqueFd reopen_fd(int fd, bool direct);

// A file as the I/O paths use it: the caller's fd, what it allows, and its
// twins, the same file with O_DIRECT set or cleared, each opened on first
// need and closed with the File. The caller's fd is never changed. A File
// lives for one call of the fd API and for the life of a file handle.
class File {
  public:
    // Inspects fd as inspect_fd() does (and throws as it does).
    explicit File(int fd) : info_(inspect_fd(fd)) {}
    File(const File &) = delete;
    File &operator=(const File &) = delete;

    const FileInfo &info() const { return info_; }
    // What one request sees: the access checked, the size as it is now.
    // Requests on one handle may run at once, so each takes its own copy.
    FileInfo for_request(bool write) const {
        check_access(info_, write);
        FileInfo fi = info_;
        refresh_size(fi);
        return fi;
    }
    int fd() const { return info_.fd; }
    // An fd of this file with O_DIRECT (direct) or without: the caller's
    // own when it already is so, else the twin; -1 when the twin cannot be
    // opened (no /proc, permissions dropped since the caller opened it, a
    // file system without O_DIRECT), and why_no_twin() then says why.
    // Thread safe.
    int fd_with(bool direct);
    const std::string &why_no_twin(bool direct) const { return twins_[direct].error; }

  private:
    struct Twin {
        std::once_flag once;
        UniqueFd fd;
        std::string error;
    };
    FileInfo info_;
    Twin twins_[2]; // [0] without O_DIRECT, [1] with
};

inline uint64_t align_down(uint64_t v, uint64_t a) {
    return v - v % a;
}
inline uint64_t align_up(uint64_t v, uint64_t a) {
    return align_down(v + a - 1, a);
}

} // namespace phxfs::core
