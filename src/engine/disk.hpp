// The disk under a file, as sysfs describes it, and for NVMe how the host
// reaches its controllers: over PCIe, or over a fabric (NVMe-oF: TCP, RDMA,
// Fibre Channel, the loop target). The transport decides who moves the
// bytes of a direct read: a PCIe controller DMAs into device memory itself;
// over TCP the kernel's receive path copies them with the CPU; over RDMA
// the NIC DMAs them (soft-RoCE, rdma_rxe, copies them with the CPU). The
// disk's queue also decides whether the kernel's P2PDMA pages are taken at
// all: only a PCIe NVMe namespace's queue takes them (6.12; a multipath
// head's does not, nor does any other driver's), and then only where the
// kernel's distance check passes; any other fails O_DIRECT with EREMOTEIO.
#pragma once

#include <sys/types.h>

#include <string>

namespace phxfs::core {

// An NVMe controller's sysfs attributes (/sys/class/nvme/nvmeN).
struct NvmeController {
    std::string transport; // "pcie", "tcp", "rdma", "fc", "loop"; "" when not one
    std::string address;   // PCI address, or "traddr=...,trsvcid=..." of a fabric
};
NvmeController nvme_controller(const std::string &sysfs_dir);

struct DiskInfo {
    std::string disk;       // "nvme2n1", "sda", ... ("" when dev is no block device)
    std::string transport;  // NVMe: of the controller (a fabric's when any path is one)
    std::string address;    // NVMe: that controller's address
    bool multipath = false; // an NVMe multipath head (nvme<S>n<N> over nvme<S>c<C>n<N>)
    bool fabric() const { return !transport.empty() && transport != "pcie"; }
    // Whether the disk's queue takes P2PDMA pages at all (the distance
    // check then decides): a PCIe namespace of its own, nothing else.
    bool queue_takes_p2pdma() const { return transport == "pcie" && !multipath; }
};

// The disk of block device dev (a file's st_dev, a device node's st_rdev):
// a partition counts as its disk; a multipath NVMe head is described by the
// controllers with a path to it. Reads sysfs under sysroot; never throws.
DiskInfo disk_info(dev_t dev, const std::string &sysroot = "/sys");
// The disk a file lives on (st_rdev for a block device node, else st_dev).
DiskInfo disk_of_fd(int fd);
DiskInfo disk_of_path(const std::string &path);

// "nvme-tcp", "nvme-rdma", ... for a fabric disk, "" otherwise.
std::string fabric_name(const DiskInfo &d);

// Why O_DIRECT into P2PDMA pages failed with EREMOTEIO on this disk: the
// distance check for a plain PCIe NVMe namespace, else the disk's queue.
std::string p2pdma_refusal(const DiskInfo &d);

// Who moves the bytes of a direct read from a fabric disk into device memory.
std::string fabric_mover(const std::string &transport);

} // namespace phxfs::core
