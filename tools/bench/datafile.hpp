// datafile.hpp - the data files of phxfs-bench: created with the pattern,
// checked against it with plain pread, zeroed before verified writes.
//
// A file may hold the pattern of a range that starts elsewhere (`base`): the
// kvcache workload's chunk files each hold their slice of one virtual store,
// so that byte o of the store has the same content whichever file holds it.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace phxbench {

// "what: strerror(errno)".
std::string errno_msg(const std::string &what);

// An owned file descriptor.
class Fd {
  public:
    explicit Fd(int fd = -1) : fd_(fd) {}
    ~Fd() { reset(); }
    Fd(Fd &&o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd &operator=(Fd &&o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    int get() const { return fd_; }

  private:
    void reset();
    int fd_;
};

// open(2) with O_CLOEXEC; throws std::runtime_error naming the path.
Fd open_or_throw(const std::string &path, int flags, mode_t mode = 0644);

void pwrite_all(int fd, const void *buf, size_t n, uint64_t off);
// Reads n bytes; returns fewer only at end of file.
size_t pread_all(int fd, void *buf, size_t n, uint64_t off);

// Writes the pattern of [base + from, base + to) at file offsets [from, to).
void write_pattern(int fd, uint64_t from, uint64_t to, uint64_t base = 0);
// Checks file offsets [from, to) against the pattern of [base + from, base +
// to) with plain pread; returns the first file offset that differs (a file
// that ends early differs at its end).
std::optional<uint64_t> check_pattern(int fd, uint64_t from, uint64_t to, uint64_t base = 0);

// Makes [0, n) of the file read as zeros, so that a verified write run must
// really write every byte it claims to. Keeps the blocks allocated where the
// file system can.
void zero_range(int fd, uint64_t n);

// Makes `path` hold at least `size` bytes of the pattern (from `base`):
// creates (or recreates) it when missing or smaller. size 0 means "whatever
// is there". Returns the size to run over; sets created when this call wrote
// the file. With check_existing, an existing file must hold the pattern at
// its start.
uint64_t prepare_file(const std::string &path, uint64_t size, bool check_existing, bool &created,
                      uint64_t base = 0);

} // namespace phxbench
