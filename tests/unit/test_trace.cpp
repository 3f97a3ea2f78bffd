// The path trace (src/core/trace.hpp): silent unless asked; asked, one line per
// call with the path, the bytes and why the direct path did not serve them,
// and failures with their message.
#include "testutil.hpp"

#include <fstream>
#include <sstream>

using namespace phxtest;

namespace {

// Standard error goes to a file while the object lives.
class CaptureStderr {
  public:
    explicit CaptureStderr(std::string path) : path_(std::move(path)) {
        saved_ = ::dup(STDERR_FILENO);
        const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fd, STDERR_FILENO);
        ::close(fd);
    }
    ~CaptureStderr() { restore(); }
    std::string text() {
        restore();
        std::ifstream in(path_);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }

  private:
    void restore() {
        if (saved_ >= 0) {
            ::dup2(saved_, STDERR_FILENO);
            ::close(saved_);
            saved_ = -1;
        }
    }
    std::string path_;
    int saved_ = -1;
};

class Trace : public DeviceTest {
  protected:
    void set_trace(uint32_t on) {
        phxfs_config c{};
        c.size = sizeof c;
        ASSERT_EQ(phxfs_get_config(&c), 0);
        c.trace = on;
        ASSERT_EQ(phxfs_set_config(&c), 0) << phxfs_last_error();
    }
};

TEST_F(Trace, SilentUnlessAsked) {
    if (std::getenv("PHXFS_TRACE"))
        GTEST_SKIP() << "PHXFS_TRACE is set";
    const std::string path = dir_.file("data");
    make_pattern_file(path, 1 << 20);
    const int fd = ::open(path.c_str(), O_RDONLY);
    auto buf = host_buffer(1 << 20);
    CaptureStderr err(dir_.file("stderr"));
    ASSERT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 1 << 20, 0), 1 << 20);
    EXPECT_EQ(phxfs_read({-1, 0}, buf.get(), 0, 4096, 0), -1);
    EXPECT_EQ(err.text(), "");
    ::close(fd);
}

TEST_F(Trace, OneLinePerCallWithThePathAndWhy) {
    const std::string path = dir_.file("data");
    make_pattern_file(path, 1 << 20);
    const int fd = ::open(path.c_str(), O_RDWR);
    auto buf = host_buffer(1 << 20);
    set_trace(1);
    CaptureStderr err(dir_.file("stderr"));
    ASSERT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 65536, 4096), 65536);
    ASSERT_EQ(phxfs_write({fd, 0}, buf.get(), 0, 100, 7), 100);
    EXPECT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 4096, 2 << 20), 0); // past the end
    EXPECT_EQ(phxfs_read({fd, 0}, nullptr, 0, 4096, 0), -1);
    set_trace(0);
    ASSERT_EQ(phxfs_read({fd, 0}, buf.get(), 0, 4096, 0), 4096);
    const std::string text = err.text();
    const std::string pid = "phxfs[" + std::to_string(::getpid()) + "]: ";
    const std::string fds = " fd " + std::to_string(fd) + " ";
    EXPECT_NE(text.find(pid + "read dev 0" + fds +
                        "65536 B at 4096: compat 65536 B (host memory is not device memory), "),
              std::string::npos)
        << text;
    EXPECT_NE(text.find(pid + "write dev 0" + fds + "100 B at 7: compat 100 B ("),
              std::string::npos)
        << text;
    EXPECT_NE(text.find(pid + "read dev 0" + fds + "4096 B at 2097152: nothing (end of file)"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find(pid + "read dev 0" + fds + "4096 B at 0: failed: NULL buffer"),
              std::string::npos)
        << text;
    // Four calls traced, none after the trace went off.
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4) << text;
    ::close(fd);
}

TEST_F(Trace, ConfigRefusesOtherValues) {
    phxfs_config c{};
    c.size = sizeof c;
    ASSERT_EQ(phxfs_get_config(&c), 0);
    c.trace = 2;
    EXPECT_EQ(phxfs_set_config(&c), -1);
    EXPECT_EQ(errno, EINVAL);
}

} // namespace
