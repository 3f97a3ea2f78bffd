// What decides whether a GPU can take DMA straight from an NVMe SSD, as
// sysfs shows it: the IOMMU, the NVIDIA driver, the BAR the GPU exposes its
// memory through, and where GPU and SSDs sit in the PCIe tree.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace phxcheck {

struct IommuInfo {
    bool present = false; // the kernel drives an IOMMU (/sys/class/iommu)
    std::string mode;     // "off", "passthrough", "translated", from sysfs and the cmdline
    std::string detail;
};
IommuInfo probe_iommu();

// "" when the NVIDIA driver is not loaded.
std::string nvidia_driver_version();

struct PciPeer {
    std::string name;     // "nvme0"
    std::string bus_id;   // its PCI address ("" for a fabric controller)
    std::string relation; // "same PCIe switch", "same root port", "same host bridge", ...
    bool p2p_likely = false;
    bool common_bridge = false; // a root port or switch above both: no host bridge between
    std::string transport;      // "pcie", or the fabric of an NVMe-oF controller ("tcp", ...)
    std::string address;        // a fabric controller's ("traddr=...,trsvcid=...")
};

struct PciDeviceInfo {
    std::string bus_id;
    std::string error;            // the device is not in sysfs
    uint64_t bar1_bytes = 0;      // BAR1: where NVIDIA GPUs expose their memory
    std::string iommu_group_type; // "identity", "DMA", ... or "" without an IOMMU
    std::vector<PciPeer> nvme;    // every NVMe controller and how far it is (fabric ones too)
};
PciDeviceInfo probe_pci(const std::string &bus_id);

} // namespace phxcheck
