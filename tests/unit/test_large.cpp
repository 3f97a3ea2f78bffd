// One call moving more than 2 GiB each way, with the default configuration
// (all workers, default chunks).
#include "testutil.hpp"

using namespace phxtest;

namespace {

constexpr uint64_t kOff = 3 * 4096 + 8;        // not 4 KiB aligned
constexpr size_t kLen = (size_t(5) << 29) + 8; // 2.5 GiB + 8 bytes

class Large : public DeviceTest {};

TEST_F(Large, ReadAndWriteOverTwoGiBInOneCall) {
    const std::string path = dir_.file("large");
    make_pattern_file(path, kOff + kLen + 4096);
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    auto buf = host_buffer(kLen);

    ASSERT_EQ(phxfs_read({fd, 0}, buf.get(), 0, kLen, kOff), static_cast<ssize_t>(kLen))
        << phxfs_last_error();
    ASSERT_EQ(first_mismatch_fast(buf.get(), kLen, kOff), kLen);

    fill_pattern_fast(buf.get(), kLen, kOff, 42);
    ASSERT_EQ(phxfs_write({fd, 0}, buf.get(), 0, kLen, kOff), static_cast<ssize_t>(kLen))
        << phxfs_last_error();
    std::memset(buf.get(), 0, kLen);
    for (uint64_t done = 0; done < kLen;) {
        const ssize_t n =
            ::pread(fd, buf.get() + done, std::min<uint64_t>(kLen - done, 1 << 30), kOff + done);
        ASSERT_GT(n, 0);
        done += n;
    }
    EXPECT_EQ(first_mismatch_fast(buf.get(), kLen, kOff, 42), kLen);
    ::close(fd);
}

} // namespace
