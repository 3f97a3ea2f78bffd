// What the tests of the io_uring ring (src/engine/uring.hpp) share: pattern
// files opened with O_DIRECT, pieces of 4 and 8 KiB at shuffled offsets, and
// the ring's depth set for one test.
#pragma once

#include "core/config.hpp"
#include "engine/uring.hpp"
#include "testutil.hpp"

#include <algorithm>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

namespace phxtest {

using phxfs::core::uring::Piece;
using Outcome = Piece::Outcome;

// Pieces use buffer and file in slots of this size.
constexpr size_t kSlot = 8192;

// count pieces of 4 or 8 KiB: piece i moves between buffer slot i and a
// file slot of a shuffled order (every file slot once).
inline std::vector<Piece> shuffled_pieces(int fd, bool write, uint8_t *buf, size_t count,
                                          unsigned seed) {
    std::vector<size_t> slot(count);
    std::iota(slot.begin(), slot.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(slot.begin(), slot.end(), rng);
    std::vector<Piece> p(count);
    for (size_t i = 0; i < count; ++i) {
        p[i].fd = fd;
        p[i].write = write;
        p[i].buf = reinterpret_cast<char *>(buf) + i * kSlot;
        p[i].n = rng() % 2 ? 8192 : 4096;
        p[i].off = slot[i] * kSlot;
    }
    return p;
}

// How many of the pieces ended as `o`.
inline size_t count_of(const std::vector<Piece> &p, Outcome o) {
    return static_cast<size_t>(
        std::count_if(p.begin(), p.end(), [o](const Piece &x) { return x.outcome == o; }));
}

// A test of the ring alone: files in a directory of its own, the library's
// configuration put back at the end.
class RingTest : public ::testing::Test {
  protected:
    void SetUp() override {
#ifndef PHXFS_HAVE_URING
        GTEST_SKIP() << "libphxfs is built without io_uring (PHXFS_WITH_URING=OFF or no liburing)";
#endif
        saved_ = phxfs::core::config();
    }
    void TearDown() override {
        for (int fd : fds_)
            ::close(fd);
        if (saved_) // not where SetUp skipped
            phxfs::core::set_config(*saved_);
    }
    // io_uring with at most d pieces in flight (0: off) for this test.
    void depth(unsigned d) {
        phxfs::core::Config c = phxfs::core::config();
        c.uring_depth = d;
        phxfs::core::set_config(c);
    }
    // A pattern file of n bytes (seed), opened with flags | O_DIRECT.
    int pattern(const char *name, uint64_t n, uint64_t seed, int flags = O_RDONLY) {
        const std::string path = dir_.file(name);
        make_pattern_file(path, n, seed);
        return open_direct(path, flags);
    }
    // n pieces reading a pattern file of their own (name, seed) into buf_,
    // whose slot i is piece i's; the file is fd_.
    std::vector<Piece> reads(const char *name, size_t n, uint64_t seed) {
        fd_ = pattern(name, n * kSlot, seed);
        buf_ = host_buffer(n * kSlot);
        return shuffled_pieces(fd_, false, buf_.get(), n, static_cast<unsigned>(seed) + 100);
    }
    // An empty file opened for writing with O_DIRECT.
    int empty(const char *name) {
        return open_direct(dir_.file(name), O_RDWR | O_CREAT);
    }
    int open_direct(const std::string &path, int flags) {
        const int fd = ::open(path.c_str(), flags | O_DIRECT, 0644);
        EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
        fds_.push_back(fd);
        return fd;
    }
    TempDir dir_;
    std::vector<int> fds_;
    int fd_ = -1;
    std::unique_ptr<uint8_t[], FreeDeleter> buf_;
    std::optional<phxfs::core::Config> saved_;
};

} // namespace phxtest
