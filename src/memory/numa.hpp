// NUMA placement of a device's staging memory: the node a PCI device hangs
// off, from sysfs, and a scope in which the calling thread's allocations
// prefer that node. Plain syscalls (set_mempolicy, get_mempolicy): libnuma
// is not needed.
#pragma once

#include <string>

namespace phxfs::core {

// The NUMA node of the PCI device at bus_id ("0000:3b:00.0", any case; an
// 8-digit domain as NVIDIA prints it is taken too), as
// <sysroot>/bus/pci/devices/<bus_id>/numa_node says; -1 where it says -1
// (one node, or firmware that does not tell), where the file is missing or
// unreadable, and for an empty bus_id (host memory).
int pci_numa_node(const std::string &bus_id, const std::string &sysroot = "/sys");

// While it lives, memory the calling thread faults in comes from `node`
// where the node has free memory, else from anywhere (MPOL_PREFERRED: never
// an allocation failure); then the thread's own policy is back. node < 0,
// or a kernel that refuses (no NUMA, seccomp), leaves everything as it is.
class PreferredNode {
  public:
    explicit PreferredNode(int node);
    ~PreferredNode();
    PreferredNode(const PreferredNode &) = delete;
    PreferredNode &operator=(const PreferredNode &) = delete;
    // Whether the policy was set (and is put back).
    bool active() const { return active_; }

  private:
    static constexpr unsigned kMaxNodes = 1024;
    bool active_ = false;
    int old_mode_ = 0;
    unsigned long old_mask_[kMaxNodes / (8 * sizeof(unsigned long))] = {};
};

// The node holding the page at p (which must be faulted in), or -1.
int node_of(const void *p);

} // namespace phxfs::core
