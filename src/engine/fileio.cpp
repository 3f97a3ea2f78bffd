#include "engine/fileio.hpp"

#include "core/error.hpp"
#include "core/fault.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>

namespace phxfs::core {

UniqueFd &UniqueFd::operator=(UniqueFd &&o) noexcept {
    if (this != &o) {
        reset();
        fd_ = o.release();
    }
    return *this;
}

void UniqueFd::reset() {
    if (fd_ >= 0)
        ::close(fd_);
    fd_ = -1;
}

FileInfo inspect_fd(int fd) {
    FileInfo fi;
    fi.fd = fd;
    const int fl = fd < 0 ? -1 : ::fcntl(fd, F_GETFL);
    if (fl < 0)
        fail(EBADF, "fd " + std::to_string(fd) + " is not an open file");
    const int acc = fl & O_ACCMODE;
    fi.readable = acc == O_RDONLY || acc == O_RDWR;
    fi.writable = acc == O_WRONLY || acc == O_RDWR;
    fi.direct = fl & O_DIRECT;
    fi.append = fl & O_APPEND;
    struct statx st {};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE | STATX_DIOALIGN, &st) < 0)
        fail_errno("statx");
    if (st.stx_mask & STATX_DIOALIGN) {
        fi.dio_offset_align = st.stx_dio_offset_align;
        fi.dio_mem_align = std::max(st.stx_dio_mem_align, 1u);
    }
    if (auto f = fault::at(fault::Site::dio_align)) // a file system with other blocks
        fi.dio_offset_align = static_cast<uint32_t>(f->max_bytes);
    if (S_ISREG(st.stx_mode)) {
        fi.regular = true;
        fi.size = static_cast<uint64_t>(st.stx_size);
    } else if (S_ISBLK(st.stx_mode)) {
        uint64_t bytes = 0;
        if (::ioctl(fd, BLKGETSIZE64, &bytes) == 0)
            fi.size = bytes;
    } else if (S_ISFIFO(st.stx_mode) || S_ISSOCK(st.stx_mode)) {
        fail(ESPIPE, "fd " + std::to_string(fd) + " is a pipe or socket: no positional I/O");
    }
    return fi;
}

void check_access(const FileInfo &fi, bool for_write) {
    if (for_write && !fi.writable)
        fail(EBADF, "fd " + std::to_string(fi.fd) + " is not open for writing");
    if (!for_write && !fi.readable)
        fail(EBADF, "fd " + std::to_string(fi.fd) + " is not open for reading");
    if (for_write && fi.append)
        fail(EINVAL, "fd " + std::to_string(fi.fd) +
                         " has O_APPEND: positional writes would land at the end of the file");
}

void refresh_size(FileInfo &fi) {
    struct stat st {};
    if (!fi.regular)
        return;
    if (::fstat(fi.fd, &st) < 0)
        fail_errno("fstat of fd " + std::to_string(fi.fd));
    fi.size = static_cast<uint64_t>(st.st_size);
}

namespace {

// pread(2) and pwrite(2), where tests inject faults.
ssize_t sys_pread(int fd, void *buf, size_t n, uint64_t off) {
    if (auto f = fault::at(fault::Site::pread)) {
        if (f->err)
            return errno = f->err, -1;
        n = std::min(n, f->max_bytes);
    }
    return ::pread(fd, buf, n, static_cast<off_t>(off));
}

ssize_t sys_pwrite(int fd, const void *buf, size_t n, uint64_t off) {
    if (auto f = fault::at(fault::Site::pwrite)) {
        if (f->err)
            return errno = f->err, -1;
        n = std::min(n, f->max_bytes);
    }
    return ::pwrite(fd, buf, n, static_cast<off_t>(off));
}

} // namespace

size_t pread_full(int fd, void *buf, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        const ssize_t r = sys_pread(fd, static_cast<char *>(buf) + done, n - done, off + done);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fail_errno("pread at offset " + std::to_string(off + done));
        }
        if (r == 0)
            break;
        done += static_cast<size_t>(r);
    }
    return done;
}

void pwrite_full(int fd, const void *buf, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        const ssize_t r =
            sys_pwrite(fd, static_cast<const char *>(buf) + done, n - done, off + done);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fail_errno("pwrite at offset " + std::to_string(off + done));
        }
        if (r == 0)
            fail(EIO, "pwrite wrote nothing at offset " + std::to_string(off + done));
        done += static_cast<size_t>(r);
    }
}

UniqueFd reopen_fd(int fd, bool direct) {
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0)
        fail_errno("fcntl(F_GETFL)");
    // The twin keeps the caller's durability: a write on an O_SYNC/O_DSYNC
    // fd is durable when it returns, whichever fd the library wrote through.
    const int flags = (fl & (O_ACCMODE | O_SYNC | O_DSYNC)) | O_CLOEXEC | (direct ? O_DIRECT : 0);
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    int nfd = -1;
    if (auto f = fault::at(fault::Site::reopen))
        errno = f->err;
    else
        nfd = ::open(path.c_str(), flags);
    if (nfd < 0)
        fail_errno(std::string("reopening fd ") + std::to_string(fd) +
                   (direct ? " with O_DIRECT" : " without O_DIRECT"));
    return UniqueFd(nfd);
}

int File::fd_with(bool direct) {
    if (info_.direct == direct)
        return info_.fd;
    Twin &t = twins_[direct];
    std::call_once(t.once, [&] {
        try {
            t.fd = reopen_fd(info_.fd, direct);
        } catch (const Error &e) {
            t.error = e.what();
        }
    });
    return t.fd ? t.fd.get() : -1;
}

} // namespace phxfs::core
