// phxfs.hpp - the C++ API of Phoenix: RAII handles over the C API.
//
//   phxfs::Device gpu(0);                        // phxfs_open / phxfs_close
//   phxfs::Registration reg(gpu, dptr, bytes);   // phxfs_regmem / phxfs_deregmem
//   phxfs::File f("data.bin", O_RDONLY, gpu);    // owns the fd and a file handle
//   size_t n = f.read(dptr, bytes, 0);           // throws phxfs::Error
//   phxfs::Future fut = f.pread(dptr, bytes, 0); // returns at once
//   n = fut.get();                               // waits; throws phxfs::Error
//
//   phxfs::Batch batch(1024);                    // many requests in flight
//   phxfs_io io = phxfs::Batch::read(f, dptr, 4096, 0);
//   batch.submit(&io, 1);
//   phxfs_completion c;
//   batch.reap(&c, 1, 1);                        // c.result: bytes or -errno
//
// Every failure throws phxfs::Error, which carries errno and the library's
// message. Handles are move-only.
#pragma once

#include <phxfs/phxfs.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <system_error>
#include <utility>

namespace phxfs {

class Error : public std::system_error {
  public:
    Error(int err, const std::string &what)
        : std::system_error(err, std::generic_category(), what) {}
};

namespace detail {
[[noreturn]] inline void throw_last(const char *call) {
    const int err = errno;
    const char *msg = phxfs_last_error();
    throw Error(err, std::string(call) + ": " + (msg && *msg ? msg : "failed"));
}
template <typename T> T check(T ret, const char *call) {
    if (ret < 0)
        throw_last(call);
    return ret;
}
} // namespace detail

// An open device session.
class Device {
  public:
    explicit Device(int id) : id_(id) { detail::check(phxfs_open(id), "phxfs_open"); }
    ~Device() {
        if (id_ >= 0)
            phxfs_close(id_);
    }
    Device(Device &&o) noexcept : id_(std::exchange(o.id_, -1)) {}
    Device &operator=(Device &&o) noexcept {
        if (this != &o) {
            if (id_ >= 0)
                phxfs_close(id_);
            id_ = std::exchange(o.id_, -1);
        }
        return *this;
    }
    Device(const Device &) = delete;
    Device &operator=(const Device &) = delete;

    int id() const { return id_; }
    phxfs_device_info info() const {
        phxfs_device_info i{};
        i.size = sizeof i;
        detail::check(phxfs_device_get_info(id_, &i), "phxfs_device_get_info");
        return i;
    }
    phxfs_stats stats() const {
        phxfs_stats s{};
        s.size = sizeof s;
        detail::check(phxfs_get_stats(id_, &s), "phxfs_get_stats");
        return s;
    }

  private:
    int id_;
};

// A registered range of device memory.
class Registration {
  public:
    Registration(const Device &dev, const void *addr, size_t len)
        : dev_(dev.id()), addr_(addr), len_(len) {
        detail::check(phxfs_regmem(dev_, addr, len, &target_), "phxfs_regmem");
    }
    ~Registration() { reset(); }
    Registration(Registration &&o) noexcept
        : dev_(o.dev_), addr_(std::exchange(o.addr_, nullptr)), len_(o.len_), target_(o.target_) {}
    Registration &operator=(Registration &&o) noexcept {
        if (this != &o) {
            reset();
            dev_ = o.dev_;
            addr_ = std::exchange(o.addr_, nullptr);
            len_ = o.len_;
            target_ = o.target_;
        }
        return *this;
    }
    Registration(const Registration &) = delete;
    Registration &operator=(const Registration &) = delete;

    const void *addr() const { return addr_; }
    size_t size() const { return len_; }
    // The host-mapped address phxfs_regmem returned.
    void *target() const { return target_; }

  private:
    void reset() noexcept {
        if (addr_)
            phxfs_deregmem(dev_, addr_, len_);
        addr_ = nullptr;
    }
    int dev_;
    const void *addr_;
    size_t len_;
    void *target_ = nullptr;
};

// The result of an asynchronous read or write (phxfs_future_t): get()
// waits and returns the bytes moved or throws. Destroying a Future waits
// for its request.
class Future {
  public:
    Future() = default;
    explicit Future(phxfs_future_t f) : f_(f) {}
    ~Future() { phxfs_future_free(f_); }
    Future(Future &&o) noexcept : f_(std::exchange(o.f_, nullptr)) {}
    Future &operator=(Future &&o) noexcept {
        if (this != &o) {
            phxfs_future_free(f_);
            f_ = std::exchange(o.f_, nullptr);
        }
        return *this;
    }
    Future(const Future &) = delete;
    Future &operator=(const Future &) = delete;

    bool valid() const { return f_ != nullptr; }
    bool ready() const { return detail::check(phxfs_future_poll(f_), "phxfs_future_poll") == 1; }
    // True once the request has completed; false when timeout passed first.
    bool wait_for(std::chrono::nanoseconds timeout) const {
        phxfs_future_wait(f_, timeout.count()); // the request's own error is get()'s
        return ready();
    }
    size_t get() const {
        return static_cast<size_t>(detail::check(phxfs_future_wait(f_, -1), "phxfs_future_wait"));
    }

  private:
    phxfs_future_t f_ = nullptr;
};

// A file open for Phoenix on a device (a phxfs_file_t handle); owns its fd
// when opened by path.
class File {
  public:
    File(const std::string &path, int flags, const Device &dev, mode_t mode = 0644)
        : fid_{::open(path.c_str(), flags | O_CLOEXEC, mode), dev.id()}, owned_(true) {
        if (fid_.fd < 0)
            throw Error(errno, "open " + path);
        open_handle();
    }
    // Borrows fd: the caller keeps owning it, open until the File is gone.
    File(int fd, const Device &dev) : fid_{fd, dev.id()}, owned_(false) { open_handle(); }
    ~File() { reset(); }
    File(File &&o) noexcept
        : fid_(o.fid_), owned_(std::exchange(o.owned_, false)), fh_(std::exchange(o.fh_, nullptr)) {
    }
    File &operator=(File &&) = delete;
    File(const File &) = delete;
    File &operator=(const File &) = delete;

    phxfs_fileid_t id() const { return fid_; }
    int fd() const { return fid_.fd; }
    phxfs_file_t handle() const { return fh_; }

    // Bytes read into buf + buf_offset from file offset file_offset; short only at EOF.
    size_t read(void *buf, size_t n, off_t file_offset, off_t buf_offset = 0) const {
        return static_cast<size_t>(detail::check(
            phxfs_file_read(fh_, buf, buf_offset, n, file_offset), "phxfs_file_read"));
    }
    size_t write(const void *buf, size_t n, off_t file_offset, off_t buf_offset = 0) const {
        return static_cast<size_t>(detail::check(
            phxfs_file_write(fh_, buf, buf_offset, n, file_offset), "phxfs_file_write"));
    }
    // The same, returning at once; the buffer must outlive the Future.
    Future pread(void *buf, size_t n, off_t file_offset, off_t buf_offset = 0) const {
        phxfs_future_t f = nullptr;
        detail::check(phxfs_file_read_async(fh_, buf, buf_offset, n, file_offset, &f),
                      "phxfs_file_read_async");
        return Future(f);
    }
    Future pwrite(const void *buf, size_t n, off_t file_offset, off_t buf_offset = 0) const {
        phxfs_future_t f = nullptr;
        detail::check(phxfs_file_write_async(fh_, buf, buf_offset, n, file_offset, &f),
                      "phxfs_file_write_async");
        return Future(f);
    }
    // In the order of a CUDA stream (a CUstream; phxfs_file_read_stream):
    // *size is the most at the call and the size when the stream gets
    // there, as *file_offset and *buf_offset (may be NULL) are read then;
    // *result is set before the stream goes on (bytes, or -errno).
    void read_stream(void *buf, const size_t *size, const off_t *file_offset,
                     const off_t *buf_offset, ssize_t *result, void *stream) const {
        detail::check(
            phxfs_file_read_stream(fh_, buf, size, file_offset, buf_offset, result, stream),
            "phxfs_file_read_stream");
    }
    void write_stream(const void *buf, const size_t *size, const off_t *file_offset,
                      const off_t *buf_offset, ssize_t *result, void *stream) const {
        detail::check(
            phxfs_file_write_stream(fh_, buf, size, file_offset, buf_offset, result, stream),
            "phxfs_file_write_stream");
    }

  private:
    void open_handle() {
        if (phxfs_file_open(&fh_, fid_.deviceID, fid_.fd) < 0) {
            const int err = errno;
            const std::string msg = phxfs_last_error();
            reset();
            throw Error(err, "phxfs_file_open: " + msg);
        }
    }
    void reset() noexcept {
        if (fh_)
            phxfs_file_close(fh_);
        fh_ = nullptr;
        if (owned_ && fid_.fd >= 0)
            ::close(fid_.fd);
        owned_ = false;
    }
    phxfs_fileid_t fid_;
    bool owned_;
    phxfs_file_t fh_ = nullptr;
};

// Many requests in flight at once (phxfs_batch_t).
class Batch {
  public:
    explicit Batch(unsigned depth) {
        detail::check(phxfs_batch_create(&b_, depth), "phxfs_batch_create");
    }
    ~Batch() {
        if (b_)
            phxfs_batch_destroy(b_);
    }
    Batch(Batch &&o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
    Batch &operator=(Batch &&) = delete;
    Batch(const Batch &) = delete;
    Batch &operator=(const Batch &) = delete;

    static phxfs_io read(const File &f, void *buf, size_t n, off_t file_offset,
                         void *user_data = nullptr, size_t buf_offset = 0) {
        return {
            f.handle(), PHXFS_OP_READ, 0, buf, buf_offset, n, static_cast<uint64_t>(file_offset),
            user_data};
    }
    static phxfs_io write(const File &f, const void *buf, size_t n, off_t file_offset,
                          void *user_data = nullptr, size_t buf_offset = 0) {
        return {f.handle(),
                PHXFS_OP_WRITE,
                0,
                const_cast<void *>(buf),
                buf_offset,
                n,
                static_cast<uint64_t>(file_offset),
                user_data};
    }
    // Queues ios[0..n) (all or none; throws EAGAIN when the batch is too full).
    void submit(const phxfs_io *ios, unsigned n) {
        detail::check(phxfs_batch_submit(b_, ios, n), "phxfs_batch_submit");
    }
    // Takes at least min_nr (unless timeout passes; negative: no limit) and
    // at most max_nr completions into out; returns how many.
    unsigned reap(phxfs_completion *out, unsigned min_nr, unsigned max_nr,
                  std::chrono::nanoseconds timeout = std::chrono::nanoseconds(-1)) {
        return static_cast<unsigned>(detail::check(
            phxfs_batch_reap(b_, out, min_nr, max_nr, timeout.count()), "phxfs_batch_reap"));
    }
    unsigned cancel() {
        return static_cast<unsigned>(detail::check(phxfs_batch_cancel(b_), "phxfs_batch_cancel"));
    }

  private:
    phxfs_batch_t b_ = nullptr;
};

inline phxfs_config get_config() {
    phxfs_config c{};
    c.size = sizeof c;
    detail::check(phxfs_get_config(&c), "phxfs_get_config");
    return c;
}

inline void set_config(phxfs_config c) {
    c.size = sizeof c;
    detail::check(phxfs_set_config(&c), "phxfs_set_config");
}

inline int device_count() {
    return detail::check(phxfs_device_count(), "phxfs_device_count");
}

} // namespace phxfs
