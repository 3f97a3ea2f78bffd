// Data integrity through phxfs_read/phxfs_write: sizes from 1 byte to
// several chunks, unaligned offsets, O_DIRECT and buffered fds, end of file,
// sparse files, file systems without O_DIRECT, many threads at once.
#include "testutil.hpp"

#include <sys/mman.h>
#include <sys/statfs.h>

#include <thread>

using namespace phxtest;

namespace {

constexpr uint64_t kChunk = 64 << 10; // small chunks: requests span many lanes
constexpr uint64_t kFile = 3 * kChunk * 4 + 12345;

struct Case {
    uint64_t file_off;
    size_t len;
    size_t buf_off;
};

std::vector<Case> cases() {
    std::vector<Case> out;
    const size_t lens[] = {
        1, 7, 4095, 4096, 4097, kChunk - 1, kChunk, kChunk + 1, 3 * kChunk + 17, 9 * kChunk};
    const uint64_t offs[] = {0, 1, 4095, 4096, kChunk - 1, kChunk + 4096};
    for (size_t len : lens)
        for (uint64_t off : offs)
            out.push_back({off, len, off % 3 == 0 ? size_t(0) : size_t(5)});
    return out;
}

bool supports_odirect(const std::string &path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
    if (fd < 0)
        return false;
    ::close(fd);
    return true;
}

class ReadWrite : public DeviceTest, public ::testing::WithParamInterface<bool> {
  protected:
    void SetUp() override {
        DeviceTest::SetUp();
        small_chunks();
        path_ = dir_.file("data");
        make_pattern_file(path_, kFile);
        if (GetParam() && !supports_odirect(path_)) {
            GTEST_SKIP() << "PHXFS_TEST_DIR's file system has no O_DIRECT";
        }
    }
    int open_file(int flags) {
        const int fd = ::open(path_.c_str(), flags | (GetParam() ? O_DIRECT : 0));
        EXPECT_GE(fd, 0);
        return fd;
    }
    std::string path_;
};

TEST_P(ReadWrite, ReadsMatchTheFile) {
    const int fd = open_file(O_RDONLY);
    for (const Case &c : cases()) {
        auto buf = host_buffer(c.len + c.buf_off + 1);
        const ssize_t got = phxfs_read({fd, 0}, buf.get(), c.buf_off, c.len, c.file_off);
        const size_t want = std::min<uint64_t>(c.len, kFile - std::min(kFile, c.file_off));
        ASSERT_EQ(got, static_cast<ssize_t>(want))
            << "off " << c.file_off << " len " << c.len << ": " << phxfs_last_error();
        ASSERT_EQ(first_mismatch(buf.get() + c.buf_off, want, c.file_off), want)
            << "off " << c.file_off << " len " << c.len;
        ASSERT_EQ(buf[c.buf_off + want], 0xAA) << "wrote past the end of the read";
        if (c.buf_off) {
            ASSERT_EQ(buf[c.buf_off - 1], 0xAA) << "wrote before the buffer offset";
        }
    }
    ::close(fd);
}

TEST_P(ReadWrite, WritesMatchTheBuffer) {
    const int fd = open_file(O_RDWR);
    uint64_t seed = 100;
    for (const Case &c : cases()) {
        ++seed;
        auto buf = host_buffer(c.len + c.buf_off);
        fill_pattern(buf.get() + c.buf_off, c.len, c.file_off, seed);
        ASSERT_EQ(phxfs_write({fd, 0}, buf.get(), c.buf_off, c.len, c.file_off),
                  static_cast<ssize_t>(c.len))
            << "off " << c.file_off << " len " << c.len << ": " << phxfs_last_error();
        // Read back with plain POSIX I/O, a byte before and after included.
        const int check = ::open(path_.c_str(), O_RDONLY);
        const uint64_t from = c.file_off ? c.file_off - 1 : 0;
        std::vector<uint8_t> back(c.len + 2);
        const ssize_t n = ::pread(check, back.data(), back.size(), from);
        ::close(check);
        ASSERT_GE(n, static_cast<ssize_t>(c.file_off - from + c.len));
        ASSERT_EQ(first_mismatch(back.data() + (c.file_off - from), c.len, c.file_off, seed), c.len)
            << "off " << c.file_off << " len " << c.len;
        // Restore the original pattern around the write for the next case.
        make_pattern_file(path_, kFile);
    }
    ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Fd, ReadWrite, ::testing::Values(false, true),
                         [](const auto &info) { return info.param ? "ODirect" : "Buffered"; });

class EdgeCases : public DeviceTest {
  protected:
    void SetUp() override {
        DeviceTest::SetUp();
        small_chunks();
    }
};

TEST_F(EdgeCases, EndOfFile) {
    const std::string path = dir_.file("eof");
    make_pattern_file(path, 10000);
    const int fd = ::open(path.c_str(), O_RDONLY);
    auto buf = host_buffer(1 << 20);
    EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 1 << 20, 0), 10000);
    EXPECT_EQ(first_mismatch(buf.get(), 10000, 0), 10000u);
    EXPECT_EQ(buf[10000], 0xAA);
    EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 4096, 9000), 1000);
    EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 4096, 10000), 0);
    EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 4096, 1 << 30), 0);
    ::close(fd);
}

TEST_F(EdgeCases, SparseFileReadsZeros) {
    const std::string path = dir_.file("sparse");
    const uint64_t size = 16 * kChunk;
    const int fd = ::open(path.c_str(), O_CREAT | O_RDWR, 0644);
    ASSERT_EQ(::ftruncate(fd, size), 0);
    std::vector<uint8_t> data(5000);
    fill_pattern(data.data(), data.size(), 7 * kChunk + 3);
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), 7 * kChunk + 3), 5000);
    auto buf = host_buffer(size);
    ASSERT_EQ(phxfs_read({fd, 0}, buf.get(), 0, size, 0), static_cast<ssize_t>(size));
    for (uint64_t i = 0; i < size; ++i) {
        const bool in_data = i >= 7 * kChunk + 3 && i < 7 * kChunk + 3 + 5000;
        ASSERT_EQ(buf[i], in_data ? pattern_byte(i) : 0) << "at " << i;
    }
    ::close(fd);
}

TEST_F(EdgeCases, WriteExtendsFileAndFillsHoles) {
    const std::string path = dir_.file("grow");
    const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0644);
    const uint64_t off = 5 * kChunk + 77;
    const size_t len = 3 * kChunk + 5;
    auto buf = host_buffer(len);
    fill_pattern(buf.get(), len, off);
    ASSERT_EQ(phxfs_write({fd, 0}, buf.get(), 0, len, off), static_cast<ssize_t>(len));
    struct stat st {};
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), off + len);
    auto back = host_buffer(off + len);
    ASSERT_EQ(phxfs_read({fd, 0}, back.get(), 0, off + len, 0), static_cast<ssize_t>(off + len));
    for (uint64_t i = 0; i < off; ++i)
        ASSERT_EQ(back[i], 0) << i;
    EXPECT_EQ(first_mismatch(back.get() + off, len, off), len);
    ::close(fd);
}

// tmpfs refuses O_DIRECT; buffered fds there must work as anywhere else.
TEST_F(EdgeCases, FileSystemWithoutODirect) {
    struct statfs sfs {};
    if (::statfs("/dev/shm", &sfs) != 0)
        GTEST_SKIP() << "no /dev/shm";
    char tmpl[] = "/dev/shm/phxfs-test-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    ::unlink(tmpl);
    const size_t len = 5 * kChunk + 3;
    auto buf = host_buffer(len);
    fill_pattern(buf.get(), len, 11);
    ASSERT_EQ(phxfs_write({fd, 0}, buf.get(), 0, len, 11), static_cast<ssize_t>(len));
    auto back = host_buffer(len);
    ASSERT_EQ(phxfs_read({fd, 0}, back.get(), 0, len, 11), static_cast<ssize_t>(len));
    EXPECT_EQ(first_mismatch(back.get(), len, 11), len);
    ::close(fd);
}

TEST_F(EdgeCases, ManyThreadsAtOnce) {
    const std::string path = dir_.file("mt");
    constexpr int kThreads = 12;
    constexpr uint64_t kPer = 2 * kChunk + 4097;
    make_pattern_file(path, kThreads * kPer);
    const int rfd = ::open(path.c_str(), O_RDONLY);
    const std::string out = dir_.file("mt-out");
    const int wfd = ::open(out.c_str(), O_CREAT | O_RDWR, 0644);
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            auto buf = host_buffer(kPer);
            for (int round = 0; round < 5; ++round) {
                const uint64_t off = t * kPer;
                if (phxfs_read({rfd, 0}, buf.get(), 0, kPer, off) != static_cast<ssize_t>(kPer) ||
                    first_mismatch(buf.get(), kPer, off) != kPer ||
                    phxfs_write({wfd, 0}, buf.get(), 0, kPer, off) != static_cast<ssize_t>(kPer))
                    ++failures;
            }
        });
    }
    for (auto &th : threads)
        th.join();
    EXPECT_EQ(failures, 0) << phxfs_last_error();
    auto all = host_buffer(kThreads * kPer);
    ASSERT_EQ(::pread(wfd, all.get(), kThreads * kPer, 0), static_cast<ssize_t>(kThreads * kPer));
    EXPECT_EQ(first_mismatch(all.get(), kThreads * kPer, 0), kThreads * kPer);
    ::close(rfd);
    ::close(wfd);
}

TEST_F(EdgeCases, CountersShowThePath) {
    ASSERT_EQ(phxfs_reset_stats(0), 0);
    const std::string path = dir_.file("stats");
    make_pattern_file(path, 100000);
    const int fd = ::open(path.c_str(), O_RDWR);
    auto buf = host_buffer(100000);
    ASSERT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 100000, 0), 100000);
    ASSERT_EQ(phxfs_write({fd, 0}, buf.get(), 0, 5000, 0), 5000);
    ::close(fd);
    phxfs_stats st{};
    st.size = sizeof st;
    ASSERT_EQ(phxfs_get_stats(0, &st), 0);
    phxfs_device_info info{};
    info.size = sizeof info;
    ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
    if (!info.direct) {
        EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, 100000u);
        EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].write_bytes, 5000u);
        EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_calls, 1u);
        EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes, 0u);
    }
    EXPECT_EQ(st.errors, 0u);
    ASSERT_EQ(phxfs_reset_stats(0), 0);
    ASSERT_EQ(phxfs_get_stats(0, &st), 0);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, 0u);
}

} // namespace
