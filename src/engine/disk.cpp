#include "engine/disk.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace phxfs::core {

namespace {

std::string first_line(const fs::path &p) {
    std::ifstream in(p);
    std::string s;
    std::getline(in, s);
    return s;
}

} // namespace

DiskInfo disk_info(dev_t dev) {
    DiskInfo d;
    std::error_code ec;
    const fs::path link =
        "/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
    fs::path disk = fs::canonical(link, ec);
    if (ec)
        return d; // not a block device (tmpfs, NFS, overlay...)
    if (fs::exists(disk / "partition", ec))
        disk = disk.parent_path();
    d.disk = disk.filename().string();
    // A namespace's controller: device/ itself, or for a multipath head
    // (device/ is then the subsystem) the controller of each path.
    auto controller = [&](const fs::path &ns) {
        d.transport = first_line(ns / "device" / "transport");
        if (!d.transport.empty())
            d.address = first_line(ns / "device" / "address");
        return !d.transport.empty();
    };
    if (controller(disk))
        return d;
    for (const auto &path : fs::directory_iterator(disk / "multipath", ec))
        if (controller(path.path()))
            break;
    return d;
}

DiskInfo disk_of_fd(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return {};
    return disk_info(S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev);
}

std::string fabric_name(const DiskInfo &d) {
    return d.fabric() ? "nvme-" + d.transport : "";
}

} // namespace phxfs::core
