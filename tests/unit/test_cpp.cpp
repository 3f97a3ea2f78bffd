// The C++ API: RAII handles and exceptions carrying errno.
#include "testutil.hpp"

#include <phxfs/phxfs.hpp>

using namespace phxtest;

namespace {

TEST(Cpp, HandlesCleanUp) {
    TempDir dir;
    make_pattern_file(dir.file("f"), 200000);
    auto buf = host_buffer(200000);
    {
        phxfs::Device dev(0);
        phxfs::Registration reg(dev, buf.get(), 200000);
        EXPECT_NE(reg.target(), nullptr);
        EXPECT_EQ(dev.stats().registrations, 1u);
        phxfs::File f(dir.file("f"), O_RDONLY, dev);
        EXPECT_EQ(f.read(buf.get(), 200000, 0), 200000u);
        EXPECT_EQ(first_mismatch(buf.get(), 200000, 0), 200000u);
        EXPECT_EQ(f.read(buf.get(), 100, 5, 10), 100u);
        EXPECT_EQ(first_mismatch(buf.get() + 10, 100, 5), 100u);
        phxfs::Registration moved = std::move(reg);
        EXPECT_EQ(dev.stats().registrations, 1u);
    }
    // Everything was released: the device is closed again.
    errno = 0;
    EXPECT_EQ(phxfs_close(0), -1);
    EXPECT_EQ(errno, EBADF);
}

TEST(Cpp, ErrorsCarryErrnoAndMessage) {
    phxfs::Device dev(0);
    auto buf = host_buffer(4096);
    phxfs::Registration reg(dev, buf.get(), 4096);
    try {
        phxfs::Registration again(dev, buf.get(), 4096);
        FAIL() << "overlapping registration accepted";
    } catch (const phxfs::Error &e) {
        EXPECT_EQ(e.code().value(), EEXIST);
        EXPECT_NE(std::string(e.what()).find("overlaps"), std::string::npos) << e.what();
    }
    EXPECT_THROW(phxfs::Device(12345), phxfs::Error);
    EXPECT_THROW(phxfs::File("/nonexistent/x", O_RDONLY, dev), phxfs::Error);
}

TEST(Cpp, Config) {
    const phxfs_config before = phxfs::get_config();
    phxfs_config c = before;
    c.threads = 3;
    phxfs::set_config(c);
    EXPECT_EQ(phxfs::get_config().threads, 3u);
    c.threads = 0;
    EXPECT_THROW(phxfs::set_config(c), phxfs::Error);
    phxfs::set_config(before);
    EXPECT_GE(phxfs::device_count(), 1);
}

} // namespace
