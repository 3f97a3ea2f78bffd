// engine/disk: the disk under a file and its NVMe transport, from sysfs.
// Fake sysfs trees give it every shape (a PCIe namespace, a partition,
// multipath heads over fabric and PCIe paths, a controller with no path to
// the namespace, a SCSI disk); the machine's own block devices must be
// named as sysfs names them. Real fabric disks are in the VM suite.
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

using phxtest::put;

namespace {

// A sysfs tree of one PCIe controller (nvme0: nvme0n1 and its partition)
// and one subsystem (nvme-subsys2) of three controllers: nvme2 over tcp and
// nvme3 over PCIe with paths to namespace 1, nvme4 over rdma with a path to
// namespace 2 only; and a SCSI disk.
class FakeSysfs : public ::testing::Test {
  protected:
    void SetUp() override {
        const fs::path r = root_.path(), dev = r / "devices";
        const fs::path nvme0 = dev / "pci0000:00/0000:00:03.0/nvme/nvme0";
        put(nvme0 / "transport", "pcie");
        put(nvme0 / "address", "0000:00:03.0");
        fs::create_directories(nvme0 / "nvme0n1/nvme0n1p1");
        fs::create_directory_symlink(nvme0, nvme0 / "nvme0n1/device");
        put(nvme0 / "nvme0n1/nvme0n1p1/partition", "1");

        const fs::path subsys = dev / "virtual/nvme-subsystem/nvme-subsys2";
        const struct {
            const char *name, *transport, *address, *path;
        } ctrls[] = {{"nvme2", "tcp", "traddr=127.0.0.1,trsvcid=4420", "nvme2c2n1"},
                     {"nvme3", "pcie", "0000:00:05.0", "nvme2c3n1"},
                     {"nvme4", "rdma", "traddr=10.0.0.1,trsvcid=4420", "nvme2c4n2"}};
        for (const auto &c : ctrls) {
            const fs::path ctrl = dev / "virtual/nvme-fabrics/ctl" / c.name;
            put(ctrl / "transport", c.transport);
            put(ctrl / "address", c.address);
            fs::create_directories(ctrl / c.path);
            fs::create_directories(subsys);
            fs::create_directory_symlink(ctrl, subsys / c.name);
        }
        for (const char *head : {"nvme2n1", "nvme2n2"}) {
            fs::create_directories(subsys / head);
            fs::create_directory_symlink(subsys, subsys / head / "device");
        }
        // A PCIe-only multipath head (a dual-port SSD): nvme-subsys5.
        const fs::path subsys5 = dev / "virtual/nvme-subsystem/nvme-subsys5";
        const fs::path nvme5 = dev / "pci0000:00/0000:00:06.0/nvme/nvme5";
        put(nvme5 / "transport", "pcie");
        fs::create_directories(nvme5 / "nvme5c5n1");
        fs::create_directories(subsys5 / "nvme5n1");
        fs::create_directory_symlink(nvme5, subsys5 / "nvme5");
        fs::create_directory_symlink(subsys5, subsys5 / "nvme5n1/device");

        const fs::path sda = dev / "pci0000:00/0000:00:07.0/host0/target0:0:0/0:0:0:0";
        fs::create_directories(sda / "block/sda");
        fs::create_directory_symlink(sda, sda / "block/sda/device");

        const fs::path blk = r / "dev/block";
        fs::create_directories(blk);
        fs::create_directory_symlink(nvme0 / "nvme0n1", blk / "259:0");
        fs::create_directory_symlink(nvme0 / "nvme0n1/nvme0n1p1", blk / "259:1");
        fs::create_directory_symlink(subsys / "nvme2n1", blk / "259:2");
        fs::create_directory_symlink(subsys / "nvme2n2", blk / "259:3");
        fs::create_directory_symlink(subsys5 / "nvme5n1", blk / "259:4");
        fs::create_directory_symlink(sda / "block/sda", blk / "8:0");
    }
    DiskInfo at(unsigned maj, unsigned min) const {
        return disk_info(makedev(maj, min), root_.path());
    }
    phxtest::TempDir root_;
};

TEST_F(FakeSysfs, APcieNamespaceAndItsPartition) {
    for (unsigned min : {0u, 1u}) {
        const DiskInfo d = at(259, min);
        EXPECT_EQ(d.disk, "nvme0n1");
        EXPECT_EQ(d.transport, "pcie");
        EXPECT_EQ(d.address, "0000:00:03.0");
        EXPECT_FALSE(d.multipath);
        EXPECT_FALSE(d.fabric());
        EXPECT_EQ(phxfs::core::fabric_name(d), "");
        EXPECT_NE(phxfs::core::p2pdma_refusal(d).find("distance check"), std::string::npos);
    }
}

TEST_F(FakeSysfs, AMultipathHeadIsDescribedByItsPathsAFabricFirst) {
    const DiskInfo d = at(259, 2); // paths over tcp and PCIe
    EXPECT_EQ(d.disk, "nvme2n1");
    EXPECT_TRUE(d.multipath);
    EXPECT_EQ(d.transport, "tcp");
    EXPECT_EQ(d.address, "traddr=127.0.0.1,trsvcid=4420");
    EXPECT_TRUE(d.fabric());
    EXPECT_EQ(phxfs::core::fabric_name(d), "nvme-tcp");
    EXPECT_NE(phxfs::core::p2pdma_refusal(d).find("NVMe-oF (nvme-tcp)"), std::string::npos);
    // Namespace 2 has one path, through nvme4; nvme2 and nvme3 have none.
    const DiskInfo d2 = at(259, 3);
    EXPECT_EQ(d2.transport, "rdma");
    EXPECT_EQ(d2.address, "traddr=10.0.0.1,trsvcid=4420");
}

TEST_F(FakeSysfs, APcieMultipathHeadIsNoDistanceMatter) {
    const DiskInfo d = at(259, 4);
    EXPECT_EQ(d.disk, "nvme5n1");
    EXPECT_TRUE(d.multipath);
    EXPECT_EQ(d.transport, "pcie");
    EXPECT_FALSE(d.fabric());
    const std::string why = phxfs::core::p2pdma_refusal(d);
    EXPECT_NE(why.find("multipath head"), std::string::npos) << why;
}

TEST_F(FakeSysfs, OtherDisksAndMissingDevices) {
    const DiskInfo sda = at(8, 0);
    EXPECT_EQ(sda.disk, "sda");
    EXPECT_EQ(sda.transport, "");
    EXPECT_FALSE(sda.multipath);
    EXPECT_NE(phxfs::core::p2pdma_refusal(sda).find("sda is no PCIe NVMe namespace"),
              std::string::npos);
    const DiskInfo none = at(259, 9);
    EXPECT_EQ(none.disk, "");
    EXPECT_EQ(none.transport, "");
}

TEST(Disk, EveryBlockDeviceOfThisMachineIsNamedAsSysfsNamesItsDisk) {
    std::error_code ec;
    int seen = 0;
    for (const auto &e : fs::directory_iterator("/sys/class/block", ec)) {
        const fs::path real = fs::canonical(e.path(), ec);
        const bool partition = fs::exists(real / "partition");
        std::ifstream in(real / "dev");
        unsigned maj = 0, min = 0;
        char colon = 0;
        in >> maj >> colon >> min;
        EXPECT_EQ(disk_info(makedev(maj, min)).disk,
                  (partition ? real.parent_path() : real).filename().string())
            << e.path();
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
    ::close(p[0]);
    ::close(p[1]);
    EXPECT_EQ(disk_of_fd(-1).disk, "");
    EXPECT_EQ(phxfs::core::disk_of_path("/no/such/path").disk, "");
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
    EXPECT_EQ(phxfs::core::disk_of_path(path).disk, disk_info(st.st_dev).disk);
    ::close(fd);
}

} // namespace
