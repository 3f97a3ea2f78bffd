// phxfs.hpp - the C++ API of Phoenix: RAII handles over the C API.
//
//   phxfs::Device gpu(0);                        // phxfs_open / phxfs_close
//   phxfs::Registration reg(gpu, dptr, bytes);   // phxfs_regmem / phxfs_deregmem
//   phxfs::File f("data.bin", O_RDONLY, gpu);    // owns the fd
//   size_t n = f.read(dptr, bytes, 0);           // throws phxfs::Error
//
// Every failure throws phxfs::Error, which carries errno and the library's
// message. Handles are move-only.
#pragma once

#include <phxfs/phxfs.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
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

// A file bound to a device; owns its fd when opened by path.
class File {
  public:
    File(const std::string &path, int flags, const Device &dev, mode_t mode = 0644)
        : fid_{::open(path.c_str(), flags | O_CLOEXEC, mode), dev.id()}, owned_(true) {
        if (fid_.fd < 0)
            throw Error(errno, "open " + path);
    }
    // Borrows fd: the caller keeps owning it.
    File(int fd, const Device &dev) : fid_{fd, dev.id()}, owned_(false) {}
    ~File() {
        if (owned_ && fid_.fd >= 0)
            ::close(fid_.fd);
    }
    File(File &&o) noexcept : fid_(o.fid_), owned_(std::exchange(o.owned_, false)) {}
    File &operator=(File &&) = delete;
    File(const File &) = delete;
    File &operator=(const File &) = delete;

    phxfs_fileid_t id() const { return fid_; }
    int fd() const { return fid_.fd; }

    // Bytes read into buf + buf_offset from file offset file_offset; short only at EOF.
    size_t read(void *buf, size_t n, off_t file_offset, off_t buf_offset = 0) const {
        return static_cast<size_t>(
            detail::check(phxfs_read(fid_, buf, buf_offset, n, file_offset), "phxfs_read"));
    }
    size_t write(const void *buf, size_t n, off_t file_offset, off_t buf_offset = 0) const {
        return static_cast<size_t>(
            detail::check(phxfs_write(fid_, buf, buf_offset, n, file_offset), "phxfs_write"));
    }

  private:
    phxfs_fileid_t fid_;
    bool owned_;
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
