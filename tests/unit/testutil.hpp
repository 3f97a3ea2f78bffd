// Helpers for the unit tests: temporary files with a known pattern, and
// checks of any range against it.
#pragma once

#include <phxfs/phxfs.h>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace phxtest {

// The byte every pattern file holds at offset off (a function of off alone).
inline uint64_t pattern_z(uint64_t word, uint64_t seed) {
    uint64_t z = word * 0x9e3779b97f4a7c15ull + seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
inline uint8_t pattern_byte(uint64_t off, uint64_t seed = 1) {
    return static_cast<uint8_t>(pattern_z(off / 8, seed) >> ((off % 8) * 8));
}

inline void fill_pattern(void *buf, size_t n, uint64_t off, uint64_t seed = 1) {
    auto *p = static_cast<uint8_t *>(buf);
    for (size_t i = 0; i < n; ++i)
        p[i] = pattern_byte(off + i, seed);
}

// Index of the first byte of buf that differs from the pattern, or n.
inline size_t first_mismatch(const void *buf, size_t n, uint64_t off, uint64_t seed = 1) {
    const auto *p = static_cast<const uint8_t *>(buf);
    for (size_t i = 0; i < n; ++i)
        if (p[i] != pattern_byte(off + i, seed))
            return i;
    return n;
}

// Word-at-a-time pattern helpers for multi-GiB buffers; off must be a
// multiple of 8.
inline uint64_t pattern_word(uint64_t off, uint64_t seed = 1) {
    if (off % 8 == 0) // little endian: the word is the generator's output
        return pattern_z(off / 8, seed);
    uint64_t w = 0;
    for (int i = 7; i >= 0; --i)
        w = (w << 8) | pattern_byte(off + i, seed);
    return w;
}
inline void fill_pattern_fast(void *buf, size_t n, uint64_t off, uint64_t seed = 1) {
    auto *p = static_cast<uint8_t *>(buf);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint64_t w = pattern_word(off + i, seed);
        std::memcpy(p + i, &w, 8);
    }
    fill_pattern(p + i, n - i, off + i, seed);
}
inline size_t first_mismatch_fast(const void *buf, size_t n, uint64_t off, uint64_t seed = 1) {
    const auto *p = static_cast<const uint8_t *>(buf);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w != pattern_word(off + i, seed))
            return i + first_mismatch(p + i, 8, off + i, seed);
    }
    return i + first_mismatch(p + i, n - i, off + i, seed);
}

// A directory for test files on a file system that supports O_DIRECT
// (PHXFS_TEST_DIR, else the build directory), removed at the end.
class TempDir {
  public:
    TempDir() {
        const char *base = std::getenv("PHXFS_TEST_DIR");
        std::string tmpl = std::string(base && *base ? base : ".") + "/phxfs-test-XXXXXX";
        std::vector<char> b(tmpl.begin(), tmpl.end());
        b.push_back('\0');
        if (!mkdtemp(b.data()))
            throw std::runtime_error("mkdtemp failed");
        path_ = std::filesystem::absolute(b.data()); // symlinks in it resolve from anywhere
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::string &path() const { return path_; }
    std::string file(const std::string &name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

// Writes v and a newline to p, making its directories: one attribute of a
// fake sysfs tree (test_disk.cpp, test_numa.cpp).
inline void put(const std::filesystem::path &p, const std::string &v) {
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << v << "\n";
}

// Writes a pattern file of n bytes with plain pwrite.
inline void make_pattern_file(const std::string &path, uint64_t n, uint64_t seed = 1) {
    int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> buf(8 << 20);
    for (uint64_t off = 0; off < n; off += buf.size()) {
        const size_t len = std::min<uint64_t>(buf.size(), n - off);
        fill_pattern_fast(buf.data(), len, off, seed);
        ASSERT_EQ(::pwrite(fd, buf.data(), len, off), static_cast<ssize_t>(len));
    }
    ::close(fd);
}

// Host memory aligned to a page, freed on scope exit.
struct FreeDeleter {
    void operator()(void *p) const { std::free(p); }
};
inline std::unique_ptr<uint8_t[], FreeDeleter> host_buffer(size_t n, int fill = 0xAA) {
    void *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096 + 4096);
    std::memset(p, fill, n + 1);
    return std::unique_ptr<uint8_t[], FreeDeleter>(static_cast<uint8_t *>(p));
}

// Opens device 0 for the test's duration, with a configuration that makes
// small requests span many chunks and lanes.
class DeviceTest : public ::testing::Test {
  protected:
    void SetUp() override {
        saved_.size = sizeof saved_;
        ASSERT_EQ(phxfs_get_config(&saved_), 0);
        ASSERT_EQ(phxfs_open(0), 0) << phxfs_last_error();
    }
    void TearDown() override {
        EXPECT_EQ(phxfs_close(0), 0) << phxfs_last_error();
        EXPECT_EQ(phxfs_set_config(&saved_), 0);
    }
    void small_chunks(uint32_t threads = 4, uint64_t chunk = 64 << 10) {
        phxfs_config c = saved_;
        c.mode = PHXFS_MODE_AUTO;
        c.threads = threads;
        c.chunk_bytes = chunk;
        c.staging_bytes = 2 * chunk * threads;
        ASSERT_EQ(phxfs_set_config(&c), 0) << phxfs_last_error();
    }
    // A pattern file of n bytes in the test's directory; returns its path.
    std::string pattern_file(const char *name, uint64_t n) {
        const std::string path = dir_.file(name);
        make_pattern_file(path, n);
        return path;
    }
    TempDir dir_;
    phxfs_config saved_{};
};

} // namespace phxtest
