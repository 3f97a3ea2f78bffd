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

// nvme<S>n<N> -> {S, N} for a multipath head's name; {"", ""} otherwise.
std::pair<std::string, std::string> head_ids(const std::string &name) {
    const size_t n = name.find('n', 4);
    if (name.rfind("nvme", 0) != 0 || n == std::string::npos || n == 4 || n + 1 == name.size())
        return {};
    const std::string s = name.substr(4, n - 4), ns = name.substr(n + 1);
    const bool digits = s.find_first_not_of("0123456789") == std::string::npos &&
                        ns.find_first_not_of("0123456789") == std::string::npos;
    return digits ? std::make_pair(s, ns) : std::make_pair(std::string(), std::string());
}

} // namespace

NvmeController nvme_controller(const std::string &sysfs_dir) {
    NvmeController c;
    c.transport = first_line(fs::path(sysfs_dir) / "transport");
    if (!c.transport.empty())
        c.address = first_line(fs::path(sysfs_dir) / "address");
    return c;
}

DiskInfo disk_info(dev_t dev, const std::string &sysroot) {
    DiskInfo d;
    std::error_code ec;
    const fs::path link = fs::path(sysroot) / "dev" / "block" /
                          (std::to_string(major(dev)) + ":" + std::to_string(minor(dev)));
    fs::path disk = fs::canonical(link, ec);
    if (ec)
        return d; // not a block device (tmpfs, NFS, overlay...)
    if (fs::exists(disk / "partition", ec))
        disk = disk.parent_path();
    d.disk = disk.filename().string();
    // A namespace's controller is its device/.
    const fs::path device = disk / "device";
    if (const NvmeController c = nvme_controller(device); !c.transport.empty()) {
        d.transport = c.transport;
        d.address = c.address;
        return d;
    }
    // A multipath head's device/ is its NVMe subsystem, which links each of
    // its controllers (nvmeC); those with a path to this namespace have a
    // child nvme<S>c<C>n<N>. A fabric path, if any, names the transport.
    const auto [subsys, nsid] = head_ids(d.disk);
    if (subsys.empty())
        return d;
    fs::directory_iterator it(device, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
        const std::string ctrl = it->path().filename().string();
        if (ctrl.size() <= 4 || ctrl.rfind("nvme", 0) != 0 ||
            ctrl.find_first_not_of("0123456789", 4) != std::string::npos)
            continue;
        const std::string path = "nvme" + subsys + "c" + ctrl.substr(4) + "n" + nsid;
        std::error_code e2;
        if (!fs::exists(it->path() / path, e2))
            continue;
        const NvmeController c = nvme_controller(it->path());
        if (c.transport.empty() || (d.fabric() && c.transport == "pcie"))
            continue;
        d.multipath = true;
        d.transport = c.transport;
        d.address = c.address;
    }
    return d;
}

DiskInfo disk_of_fd(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return {};
    return disk_info(S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev);
}

DiskInfo disk_of_path(const std::string &path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        return {};
    return disk_info(S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev);
}

std::string fabric_name(const DiskInfo &d) {
    return d.fabric() ? "nvme-" + d.transport : "";
}

std::string p2pdma_refusal(const DiskInfo &d) {
    if (d.fabric())
        return d.disk + " is reached over NVMe-oF (" + fabric_name(d) +
               "), whose queues take none of the device's P2PDMA pages (only a PCIe NVMe "
               "namespace's queue can DMA peer to peer)";
    if (d.multipath)
        return d.disk + " is an NVMe multipath head: its queue takes no P2PDMA pages on "
                        "kernels that give that feature to PCIe namespaces only (6.12), or "
                        "the distance check refused its paths (nvme_core.multipath=N gives "
                        "each path a namespace of its own)";
    if (!d.queue_takes_p2pdma())
        return (d.disk.empty() ? std::string("this file's disk") : d.disk) +
               " is no PCIe NVMe namespace: its queue takes none of the device's P2PDMA pages";
    return "the kernel's P2P distance check refuses DMA between " + d.disk +
           " and the device's P2PDMA pages (no common PCIe switch or whitelisted host bridge)";
}

std::string fabric_mover(const std::string &transport) {
    if (transport == "tcp")
        return "the kernel's TCP receive path copies them into device memory with the CPU";
    if (transport == "rdma")
        return "the RDMA NIC DMAs them into device memory where the platform routes PCIe "
               "peer-to-peer between NIC and device (soft-RoCE, rdma_rxe, copies them with "
               "the CPU)";
    return "the " + transport + " transport delivers them";
}

} // namespace phxfs::core
