#include "platform.hpp"

#include "engine/disk.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace phxcheck {

namespace {

std::string read_line(const fs::path &p) {
    std::ifstream in(p);
    std::string s;
    std::getline(in, s);
    return s;
}

// PCI addresses along a device's sysfs path: host bridge first.
std::vector<std::string> pci_chain(const fs::path &dev) {
    std::error_code ec;
    const fs::path real = fs::canonical(dev, ec);
    std::vector<std::string> chain;
    if (ec)
        return chain;
    for (const auto &part : real) {
        const std::string s = part.string();
        if (s.rfind("pci", 0) == 0 || (s.size() == 12 && s[4] == ':' && s[7] == ':'))
            chain.push_back(s);
    }
    return chain;
}

// How two devices reach each other, from their chains (host bridge, root
// port, switch ports..., device).
PciPeer relate(const std::vector<std::string> &gpu, const std::vector<std::string> &peer) {
    size_t common = 0;
    while (common < gpu.size() && common < peer.size() && gpu[common] == peer[common])
        ++common;
    PciPeer p;
    if (common == 0) {
        p.relation = "across host bridges (peer-to-peer DMA often unsupported)";
    } else if (common == 1) {
        p.relation = "through the root complex (works on most recent CPUs, slower)";
        p.p2p_likely = true;
    } else {
        p.relation = common == 2 ? "under the same root port" : "under the same PCIe switch (best)";
        p.p2p_likely = true;
        p.common_bridge = true;
    }
    return p;
}

} // namespace

IommuInfo probe_iommu() {
    IommuInfo info;
    std::error_code ec;
    for (const auto &e : fs::directory_iterator("/sys/class/iommu", ec)) {
        (void)e;
        info.present = true;
    }
    const std::string cmdline = read_line("/proc/cmdline");
    if (!info.present) {
        info.mode = "off";
        info.detail = "no IOMMU in use: DMA addresses are physical addresses";
    } else if (cmdline.find("iommu=pt") != std::string::npos ||
               cmdline.find("iommu.passthrough=1") != std::string::npos) {
        info.mode = "passthrough";
        info.detail = "IOMMU in passthrough (" + cmdline.substr(cmdline.find("iommu")) + ")";
    } else {
        info.mode = "translated";
        info.detail = "the IOMMU translates DMA: each device's group type below says whether "
                      "it is in identity (passthrough) mode; GPUDirect-style DMA wants "
                      "iommu=pt or the IOMMU off";
    }
    return info;
}

std::string nvidia_driver_version() {
    return read_line("/sys/module/nvidia/version");
}

PciDeviceInfo probe_pci(const std::string &bus_id) {
    PciDeviceInfo info;
    info.bus_id = bus_id;
    const fs::path dev = fs::path("/sys/bus/pci/devices") / bus_id;
    std::error_code ec;
    if (!fs::exists(dev, ec)) {
        info.error = "not in /sys/bus/pci/devices";
        return info;
    }
    std::ifstream res(dev / "resource");
    std::string line;
    for (int i = 0; std::getline(res, line); ++i) {
        if (i != 1)
            continue;
        unsigned long long start = 0, end = 0;
        std::istringstream(line) >> std::hex >> start >> end;
        info.bar1_bytes = end > start ? end - start + 1 : 0;
    }
    info.iommu_group_type = read_line(dev / "iommu_group" / "type");
    const auto gpu = pci_chain(dev);
    for (const auto &e : fs::directory_iterator("/sys/class/nvme", ec)) {
        const auto chain = pci_chain(e.path() / "device");
        PciPeer p;
        if (chain.empty()) { // NVMe over fabrics: no PCI device of its own
            const phxfs::core::NvmeController c = phxfs::core::nvme_controller(e.path());
            if (c.transport.empty())
                continue;
            p.transport = c.transport;
            p.address = c.address;
            p.relation = "over NVMe-oF (nvme-" + p.transport + "): no PCIe path to the device";
        } else {
            p = relate(gpu, chain);
            p.transport = "pcie";
            p.bus_id = chain.back();
        }
        p.name = e.path().filename().string();
        info.nvme.push_back(p);
    }
    return info;
}

} // namespace phxcheck
