#include "memory/numa.hpp"

#include <fcntl.h>
#include <linux/mempolicy.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>

namespace phxfs::core {

namespace {

long set_policy(int mode, const unsigned long *mask, unsigned long maxnode) {
    return ::syscall(SYS_set_mempolicy, mode, mask, maxnode);
}

long get_policy(int *mode, unsigned long *mask, unsigned long maxnode, const void *addr,
                unsigned long flags) {
    return ::syscall(SYS_get_mempolicy, mode, mask, maxnode, addr, flags);
}

// "0000:3B:00.0" and "00000000:3b:00.0" as sysfs names them: "0000:3b:00.0".
std::string sysfs_bus_id(std::string id) {
    for (char &c : id)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (const size_t colon = id.find(':'); colon != std::string::npos && colon > 4)
        id.erase(0, colon - 4);
    return id;
}

} // namespace

int pci_numa_node(const std::string &bus_id, const std::string &sysroot) {
    if (bus_id.empty() || bus_id.find('/') != std::string::npos)
        return -1;
    // A read(2) of a few bytes, not an iostream: this runs at a device's
    // discovery, inside whatever process loads us (a Python interpreter with
    // PyTorch's libraries), and needs nothing of libstdc++'s locale machinery.
    const std::string path = sysroot + "/bus/pci/devices/" + sysfs_bus_id(bus_id) + "/numa_node";
    const int saved = errno;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    char text[16] = {};
    const ssize_t got = fd < 0 ? -1 : ::read(fd, text, sizeof text - 1);
    if (fd >= 0)
        ::close(fd);
    errno = saved;
    if (got <= 0)
        return -1;
    char *end = nullptr;
    const long node = std::strtol(text, &end, 10);
    if (end == text || (*end && *end != '\n') || node < 0 || node > 65535)
        return -1;
    return static_cast<int>(node);
}

PreferredNode::PreferredNode(int node) {
    if (node < 0 || static_cast<unsigned>(node) >= kMaxNodes)
        return;
    const int saved = errno;
    if (get_policy(&old_mode_, old_mask_, kMaxNodes, nullptr, 0) == 0) {
        unsigned long mask[kMaxNodes / (8 * sizeof(unsigned long))] = {};
        mask[node / (8 * sizeof(unsigned long))] = 1ul << (node % (8 * sizeof(unsigned long)));
        active_ = set_policy(MPOL_PREFERRED, mask, kMaxNodes) == 0;
    }
    errno = saved;
}

PreferredNode::~PreferredNode() {
    if (!active_)
        return;
    const int saved = errno;
    // The mode as get_mempolicy gave it, mode flags included.
    if (set_policy(old_mode_, old_mask_, kMaxNodes) != 0)
        set_policy(MPOL_DEFAULT, nullptr, 0);
    errno = saved;
}

int node_of(const void *p) {
    int node = -1;
    const int saved = errno;
    if (get_policy(&node, nullptr, 0, p, MPOL_F_NODE | MPOL_F_ADDR) != 0)
        node = -1;
    errno = saved;
    return node;
}

} // namespace phxfs::core
