// engine/disk: the disk under a file, from sysfs. The NVMe transports
// (pcie, tcp, rdma) are checked in the VM suite, where such disks exist;
// here every block device of the machine must be named as sysfs names it.
#include "engine/disk.hpp"
#include "testutil.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using phxfs::core::disk_info;
using phxfs::core::disk_of_fd;
using phxfs::core::DiskInfo;

namespace {

dev_t dev_of(const fs::path &sys) {
    std::ifstream in(sys / "dev");
    unsigned maj = 0, min = 0;
    char colon = 0;
    in >> maj >> colon >> min;
    return makedev(maj, min);
}

TEST(Disk, EveryBlockDeviceIsNamedAsSysfsNamesItsDisk) {
    std::error_code ec;
    int seen = 0;
    for (const auto &e : fs::directory_iterator("/sys/class/block", ec)) {
        const fs::path real = fs::canonical(e.path(), ec);
        const bool partition = fs::exists(real / "partition");
        const DiskInfo d = disk_info(dev_of(real));
        EXPECT_EQ(d.disk, (partition ? real.parent_path() : real).filename().string()) << e.path();
        // A transport is an NVMe controller's, and then it has an address.
        if (!d.transport.empty()) {
            EXPECT_EQ(d.disk.rfind("nvme", 0), 0u) << d.disk << " " << d.transport;
        }
        EXPECT_EQ(d.fabric(), !d.transport.empty() && d.transport != "pcie");
        ++seen;
    }
    if (seen == 0)
        GTEST_SKIP() << "no block devices in /sys/class/block";
}

TEST(Disk, FilesOutsideBlockDevicesHaveNoDisk) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    const DiskInfo d = disk_of_fd(p[0]); // pipefs: an anonymous device
    EXPECT_EQ(d.disk, "");
    EXPECT_EQ(d.transport, "");
    EXPECT_FALSE(d.fabric());
    EXPECT_EQ(phxfs::core::fabric_name(d), "");
    ::close(p[0]);
    ::close(p[1]);
    EXPECT_EQ(disk_of_fd(-1).disk, "");
}

TEST(Disk, AFileIsOnTheDiskOfItsFileSystem) {
    phxtest::TempDir dir;
    const std::string path = dir.file("f");
    phxtest::make_pattern_file(path, 4096);
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(disk_of_fd(fd).disk, disk_info(st.st_dev).disk);
    ::close(fd);
    if (!fs::exists("/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" +
                    std::to_string(minor(st.st_dev))))
        GTEST_SKIP() << "the test directory is on no block device";
    EXPECT_NE(disk_info(st.st_dev).disk, "");
}

} // namespace
