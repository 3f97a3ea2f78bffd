// datafile.cpp - the data files of phxfs-bench.
#include "datafile.hpp"

#include "memory.hpp"
#include "pattern.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace phxbench {

namespace {
constexpr size_t kChunk = 16 << 20; // file generation and checks
}

std::string errno_msg(const std::string &what) {
    return what + ": " + std::strerror(errno);
}

void Fd::reset() {
    if (fd_ >= 0)
        ::close(std::exchange(fd_, -1));
}

Fd open_or_throw(const std::string &path, int flags, mode_t mode) {
    Fd fd(::open(path.c_str(), flags | O_CLOEXEC, mode));
    if (fd.get() < 0)
        throw std::runtime_error(errno_msg("open " + path));
    return fd;
}

void pwrite_all(int fd, const void *buf, size_t n, uint64_t off) {
    const auto *p = static_cast<const uint8_t *>(buf);
    while (n) {
        const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            throw std::runtime_error(errno_msg("pwrite at " + std::to_string(off)));
        p += w, n -= static_cast<size_t>(w), off += static_cast<uint64_t>(w);
    }
}

size_t pread_all(int fd, void *buf, size_t n, uint64_t off) {
    auto *p = static_cast<uint8_t *>(buf);
    size_t done = 0;
    while (done < n) {
        const ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            throw std::runtime_error(errno_msg("pread at " + std::to_string(off + done)));
        if (r == 0)
            break;
        done += static_cast<size_t>(r);
    }
    return done;
}

void write_pattern(int fd, uint64_t from, uint64_t to, uint64_t base) {
    HostBuffer buf = alloc_host(kChunk);
    for (uint64_t off = from; off < to; off += kChunk) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(kChunk, to - off));
        fill_pattern(buf.get(), len, base + off);
        pwrite_all(fd, buf.get(), len, off);
    }
}

std::optional<uint64_t> check_pattern(int fd, uint64_t from, uint64_t to, uint64_t base) {
    HostBuffer buf = alloc_host(kChunk);
    for (uint64_t off = from; off < to; off += kChunk) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(kChunk, to - off));
        const size_t got = pread_all(fd, buf.get(), len, off);
        const size_t mm = first_mismatch(buf.get(), got, base + off);
        if (mm < got)
            return off + mm;
        if (got < len)
            return off + got; // the file ends early
    }
    return std::nullopt;
}

void zero_range(int fd, uint64_t n) {
    if (::fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, static_cast<off_t>(n)) == 0)
        return;
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(n)) == 0)
        return;
    HostBuffer buf = alloc_host(kChunk);
    std::memset(buf.get(), 0, kChunk);
    for (uint64_t off = 0; off < n; off += kChunk)
        pwrite_all(fd, buf.get(), static_cast<size_t>(std::min<uint64_t>(kChunk, n - off)), off);
}

uint64_t prepare_file(const std::string &path, uint64_t size, bool check_existing, bool &created,
                      uint64_t base) {
    created = false;
    struct stat st {};
    const bool exists = ::stat(path.c_str(), &st) == 0;
    if (exists && !S_ISREG(st.st_mode))
        throw std::runtime_error(path + " is not a regular file");
    if (!exists && size == 0)
        throw std::runtime_error(path + " does not exist: give --size to create it");
    if (exists && static_cast<uint64_t>(st.st_size) >= size && st.st_size > 0) {
        const uint64_t n = size ? size : static_cast<uint64_t>(st.st_size);
        if (check_existing) {
            Fd fd = open_or_throw(path, O_RDONLY);
            if (auto mm = check_pattern(fd.get(), 0, std::min<uint64_t>(n, 1 << 20), base))
                throw std::runtime_error(path + " does not hold the phxfs-bench pattern (offset " +
                                         std::to_string(*mm) +
                                         " differs): remove it, or run without --verify");
        }
        return n;
    }
    if (size == 0)
        throw std::runtime_error(path + " is empty: give --size");
    Fd fd = open_or_throw(path, O_CREAT | O_TRUNC | O_WRONLY);
    write_pattern(fd.get(), 0, size, base);
    if (::fsync(fd.get()) != 0)
        throw std::runtime_error(errno_msg("fsync " + path));
    created = true;
    return size;
}

} // namespace phxbench
