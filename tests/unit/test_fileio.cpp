// The library's second fds on the user's file (the O_DIRECT twin, the
// buffered one for unaligned edges) behave like the user's own fd.
#include "engine/fileio.hpp"
#include "testutil.hpp"

#include <fcntl.h>

namespace {

int flags_of(int fd) {
    return ::fcntl(fd, F_GETFL);
}

// #11 finding 5: reopening kept only the access mode, so a write on an
// O_DSYNC fd could return before its data was durable.
TEST(FileIo, ReopenKeepsDurabilityFlags) {
    phxtest::TempDir dir;
    const std::string path = dir.file("sync");
    phxtest::make_pattern_file(path, 1 << 20);
    for (const int sync : {O_DSYNC, O_SYNC}) {
        const int fd = ::open(path.c_str(), O_RDWR | sync);
        ASSERT_GE(fd, 0);
        for (const bool direct : {true, false}) {
            phxfs::core::UniqueFd twin = phxfs::core::reopen_fd(fd, direct);
            const int fl = flags_of(twin.get());
            EXPECT_EQ(fl & sync, sync) << (direct ? "O_DIRECT twin" : "buffered twin");
            EXPECT_EQ(fl & O_ACCMODE, O_RDWR);
            EXPECT_EQ((fl & O_DIRECT) != 0, direct);
        }
        ::close(fd);
    }
    const int plain = ::open(path.c_str(), O_RDONLY);
    EXPECT_EQ(flags_of(phxfs::core::reopen_fd(plain, true).get()) & O_DSYNC, 0)
        << "no durability flag where the user set none";
    ::close(plain);
}

} // namespace
