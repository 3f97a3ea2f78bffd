// The API contract: devices, registrations and every error path.
#include "testutil.hpp"

#include <climits>
#include <cstdint>

using namespace phxtest;

namespace {

// Expects a call to fail with errno err and a non-empty message.
#define EXPECT_FAILS(call, err)                                                                    \
    do {                                                                                           \
        errno = 0;                                                                                 \
        EXPECT_EQ((call), -1);                                                                     \
        EXPECT_EQ(errno, (err)) << #call << ": " << phxfs_last_error();                            \
        EXPECT_STRNE(phxfs_last_error(), "");                                                      \
    } while (0)

TEST(Devices, CountAndInfo) {
    const int n = phxfs_device_count();
    ASSERT_GE(n, 1);
    phxfs_device_info info{};
    info.size = sizeof info;
    ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
    EXPECT_STRNE(info.name, "");
    if (!info.direct) { // a device without the direct path says why
        EXPECT_STRNE(info.why_not_direct, "");
    }
    EXPECT_FAILS(phxfs_device_get_info(n, &info), ENODEV);
    EXPECT_FAILS(phxfs_device_get_info(0, nullptr), EINVAL);
    info.size = 4;
    EXPECT_FAILS(phxfs_device_get_info(0, &info), EINVAL);
}

TEST(Devices, OpenCloseBadIds) {
    EXPECT_FAILS(phxfs_open(-1), ENODEV);
    EXPECT_FAILS(phxfs_open(INT_MAX), ENODEV);
    EXPECT_FAILS(phxfs_close(-1), ENODEV);
    EXPECT_FAILS(phxfs_close(0), EBADF); // not open
}

TEST(Devices, OpensAreCounted) {
    ASSERT_EQ(phxfs_open(0), 0);
    ASSERT_EQ(phxfs_open(0), 0);
    EXPECT_EQ(phxfs_close(0), 0);
    auto buf = host_buffer(4096);
    void *target = nullptr;
    EXPECT_EQ(phxfs_regmem(0, buf.get(), 4096, &target), 0) << "still open once";
    EXPECT_EQ(phxfs_close(0), 0);
    EXPECT_FAILS(phxfs_close(0), EBADF);
    // The last close dropped the registration.
    ASSERT_EQ(phxfs_open(0), 0);
    phxfs_stats st{};
    st.size = sizeof st;
    ASSERT_EQ(phxfs_get_stats(0, &st), 0);
    EXPECT_EQ(st.registrations, 0u);
    EXPECT_FAILS(phxfs_deregmem(0, buf.get(), 4096), EINVAL);
    EXPECT_EQ(phxfs_close(0), 0);
}

TEST(RegistrationClosed, NotOpen) {
    auto buf = host_buffer(4096);
    void *target = nullptr;
    EXPECT_FAILS(phxfs_regmem(0, buf.get(), 4096, &target), EBADF);
    EXPECT_FAILS(phxfs_deregmem(0, buf.get(), 4096), EBADF);
    EXPECT_FAILS(phxfs_regmem(77, buf.get(), 4096, &target), ENODEV);
}

class Registration : public DeviceTest {};

TEST_F(Registration, RoundTrip) {
    auto buf = host_buffer(1 << 20);
    void *target = nullptr;
    ASSERT_EQ(phxfs_regmem(0, buf.get() + 3, 100000, &target), 0) << phxfs_last_error();
    ASSERT_NE(target, nullptr);
    phxfs_stats st{};
    st.size = sizeof st;
    ASSERT_EQ(phxfs_get_stats(0, &st), 0);
    EXPECT_EQ(st.registrations, 1u);
    EXPECT_FAILS(phxfs_deregmem(0, buf.get() + 3, 99999), EINVAL);  // wrong length
    EXPECT_FAILS(phxfs_deregmem(0, buf.get() + 4, 100000), EINVAL); // wrong address
    EXPECT_EQ(phxfs_deregmem(0, buf.get() + 3, 100000), 0);
    EXPECT_FAILS(phxfs_deregmem(0, buf.get() + 3, 100000), EINVAL); // twice
}

TEST_F(Registration, BadArguments) {
    auto buf = host_buffer(8192);
    void *target = nullptr;
    EXPECT_FAILS(phxfs_regmem(0, buf.get(), 4096, nullptr), EINVAL);
    EXPECT_FAILS(phxfs_regmem(0, buf.get(), 0, &target), EINVAL);
    EXPECT_FAILS(phxfs_regmem(0, reinterpret_cast<void *>(UINTPTR_MAX - 10), 4096, &target),
                 EINVAL);
    EXPECT_FAILS(phxfs_regmem(0, nullptr, 4096, &target), EFAULT);
}

TEST_F(Registration, OverlapsRefused) {
    auto buf = host_buffer(1 << 16);
    uint8_t *b = buf.get();
    void *t = nullptr;
    ASSERT_EQ(phxfs_regmem(0, b + 4096, 8192, &t), 0);
    EXPECT_FAILS(phxfs_regmem(0, b + 4096, 8192, &t), EEXIST); // same range
    EXPECT_FAILS(phxfs_regmem(0, b, 4097, &t), EEXIST);        // overlaps the start
    EXPECT_FAILS(phxfs_regmem(0, b + 12287, 10, &t), EEXIST);  // overlaps the end
    EXPECT_FAILS(phxfs_regmem(0, b + 5000, 10, &t), EEXIST);   // inside
    EXPECT_FAILS(phxfs_regmem(0, b, 1 << 16, &t), EEXIST);     // around
    EXPECT_EQ(phxfs_regmem(0, b, 4096, &t), 0);                // adjacent below
    EXPECT_EQ(phxfs_regmem(0, b + 12288, 4096, &t), 0);        // adjacent above
    EXPECT_EQ(phxfs_deregmem(0, b, 4096), 0);
    EXPECT_EQ(phxfs_deregmem(0, b + 4096, 8192), 0);
    EXPECT_EQ(phxfs_deregmem(0, b + 12288, 4096), 0);
}

class IoErrors : public DeviceTest {
  protected:
    void SetUp() override {
        DeviceTest::SetUp();
        path_ = dir_.file("f");
        make_pattern_file(path_, 1 << 20);
    }
    std::string path_;
};

TEST_F(IoErrors, BadFds) {
    auto buf = host_buffer(4096);
    EXPECT_FAILS(phxfs_read({-1, 0}, buf.get(), 0, 4096, 0), EBADF);
    EXPECT_FAILS(phxfs_read({9999, 0}, buf.get(), 0, 4096, 0), EBADF);
    int fd = ::open(path_.c_str(), O_RDONLY);
    ::close(fd);
    EXPECT_FAILS(phxfs_read({fd, 0}, buf.get(), 0, 4096, 0), EBADF); // closed
}

TEST_F(IoErrors, WrongAccessMode) {
    auto buf = host_buffer(4096);
    int ro = ::open(path_.c_str(), O_RDONLY);
    int wo = ::open(path_.c_str(), O_WRONLY);
    EXPECT_FAILS(phxfs_write({ro, 0}, buf.get(), 0, 4096, 0), EBADF);
    EXPECT_FAILS(phxfs_read({wo, 0}, buf.get(), 0, 4096, 0), EBADF);
    ::close(ro);
    ::close(wo);
    // Nothing was written.
    auto check = host_buffer(1 << 20);
    int fd = ::open(path_.c_str(), O_RDONLY);
    ASSERT_EQ(::pread(fd, check.get(), 1 << 20, 0), 1 << 20);
    EXPECT_EQ(first_mismatch(check.get(), 1 << 20, 0), size_t(1) << 20);
    ::close(fd);
}

TEST_F(IoErrors, AppendRefused) {
    auto buf = host_buffer(4096);
    int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND);
    EXPECT_FAILS(phxfs_write({fd, 0}, buf.get(), 0, 4096, 0), EINVAL);
    ::close(fd);
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 1 << 20);
}

TEST_F(IoErrors, PipeRefused) {
    auto buf = host_buffer(4096);
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    EXPECT_FAILS(phxfs_read({p[0], 0}, buf.get(), 0, 10, 0), ESPIPE);
    ::close(p[0]);
    ::close(p[1]);
}

TEST_F(IoErrors, BadRanges) {
    auto buf = host_buffer(4096);
    int fd = ::open(path_.c_str(), O_RDWR);
    EXPECT_FAILS(phxfs_read({fd, 0}, buf.get(), -1, 10, 0), EINVAL);
    EXPECT_FAILS(phxfs_read({fd, 0}, buf.get(), 0, 10, -1), EINVAL);
    EXPECT_FAILS(phxfs_read({fd, 0}, buf.get(), 0, SIZE_MAX, 0), EINVAL);
    EXPECT_FAILS(phxfs_write({fd, 0}, buf.get(), 0, 4096, LLONG_MAX - 100), EINVAL);
    EXPECT_FAILS(phxfs_read({fd, 0}, nullptr, 0, 10, 0), EFAULT);
    EXPECT_FAILS(phxfs_read({fd, 7}, buf.get(), 0, 10, 0), ENODEV);
    ::close(fd);
}

TEST(IoNotOpen, DeviceMustBeOpen) {
    auto buf = host_buffer(4096);
    int fd = ::open("/proc/self/exe", O_RDONLY);
    errno = 0;
    EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 10, 0), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_NE(std::string(phxfs_last_error()).find("phxfs_open"), std::string::npos);
    ::close(fd);
}

TEST_F(IoErrors, ZeroLength) {
    auto buf = host_buffer(16);
    int fd = ::open(path_.c_str(), O_RDWR);
    EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 0, 0), 0);
    EXPECT_EQ(phxfs_write({fd, 0}, buf.get(), 0, 0, 0), 0);
    EXPECT_EQ(buf[0], 0xAA);
    ::close(fd);
}

TEST_F(IoErrors, DirectModeFailsLoudly) {
    phxfs_device_info info{};
    info.size = sizeof info;
    ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
    if (info.direct)
        GTEST_SKIP() << "device 0 has the direct path; this checks machines without it";
    phxfs_config c = saved_;
    c.mode = PHXFS_MODE_DIRECT;
    ASSERT_EQ(phxfs_set_config(&c), 0);
    auto buf = host_buffer(8192);
    int fd = ::open(path_.c_str(), O_RDWR);
    EXPECT_FAILS(phxfs_read({fd, 0}, buf.get(), 0, 4096, 0), ENOTSUP);
    EXPECT_NE(std::string(phxfs_last_error()).find("direct mode"), std::string::npos);
    EXPECT_EQ(buf[0], 0xAA); // nothing moved
    EXPECT_FAILS(phxfs_write({fd, 0}, buf.get(), 0, 4096, 0), ENOTSUP);
    ::close(fd);
    phxfs_stats st{};
    st.size = sizeof st;
    ASSERT_EQ(phxfs_get_stats(0, &st), 0);
    EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes + st.path[PHXFS_PATH_COMPAT].write_bytes, 0u);
}

TEST(Config, Validation) {
    phxfs_config c{};
    c.size = sizeof c;
    ASSERT_EQ(phxfs_get_config(&c), 0);
    EXPECT_GE(c.threads, 1u);
    EXPECT_EQ(c.chunk_bytes % 4096, 0u);
    EXPECT_GE(c.staging_bytes, 2 * c.chunk_bytes);
    phxfs_config bad = c;
    bad.threads = 0;
    EXPECT_FAILS(phxfs_set_config(&bad), EINVAL);
    bad = c;
    bad.chunk_bytes = 5000;
    EXPECT_FAILS(phxfs_set_config(&bad), EINVAL);
    bad = c;
    bad.mode = 9;
    EXPECT_FAILS(phxfs_set_config(&bad), EINVAL);
    bad = c;
    bad.staging_bytes = c.chunk_bytes;
    EXPECT_FAILS(phxfs_set_config(&bad), EINVAL);
    bad = c;
    bad.size = 8;
    EXPECT_FAILS(phxfs_set_config(&bad), EINVAL);
    EXPECT_FAILS(phxfs_set_config(nullptr), EINVAL);
    phxfs_config now{};
    now.size = sizeof now;
    ASSERT_EQ(phxfs_get_config(&now), 0);
    EXPECT_EQ(now.threads, c.threads) << "a refused config changed nothing";
}

TEST(Names, PathsAndModes) {
    EXPECT_STREQ(phxfs_path_name(PHXFS_PATH_DIRECT), "direct");
    EXPECT_STREQ(phxfs_path_name(PHXFS_PATH_COMPAT), "compat");
    EXPECT_STREQ(phxfs_mode_name(PHXFS_MODE_AUTO), "auto");
    EXPECT_STREQ(phxfs_mode_name(PHXFS_MODE_DIRECT), "direct");
    EXPECT_STREQ(phxfs_mode_name(PHXFS_MODE_COMPAT), "compat");
}

} // namespace
