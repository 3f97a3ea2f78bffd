// The disk under a file, as sysfs describes it, and for NVMe how the host
// reaches its controller: over PCIe, or over a fabric (NVMe-oF: TCP, RDMA,
// Fibre Channel, the loop target). The transport decides who moves the
// bytes of a direct read: a PCIe controller DMAs into device memory itself;
// over TCP the kernel's socket code copies them with the CPU; over RDMA the
// NIC DMAs them (soft-RoCE, rdma_rxe, copies them with the CPU). It also
// decides whether the kernel's P2PDMA pages may be used at all: only a
// PCIe NVMe queue takes them, any other fails O_DIRECT with EREMOTEIO.
#pragma once

#include <sys/types.h>

#include <string>

namespace phxfs::core {

struct DiskInfo {
    std::string disk;      // "nvme2n1", "sda", ... ("" when dev is no block device)
    std::string transport; // NVMe: "pcie", "tcp", "rdma", "fc", "loop"; "" otherwise
    std::string address;   // NVMe: the controller's address ("traddr=...,trsvcid=...")
    bool fabric() const { return !transport.empty() && transport != "pcie"; }
};

// The disk of block device dev (a file's st_dev, a device node's st_rdev):
// a partition counts as its disk, a multipath NVMe namespace by the
// controller of its first path. Reads sysfs; never throws.
DiskInfo disk_info(dev_t dev);

// The disk a file lives on (fd's st_dev, or st_rdev for a block device).
DiskInfo disk_of_fd(int fd);

// "nvme-tcp", "nvme-rdma", ... for a fabric disk, "" otherwise.
std::string fabric_name(const DiskInfo &d);

} // namespace phxfs::core
