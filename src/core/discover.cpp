// Device discovery: which ids exist and what each one is. CUDA GPUs take ids
// 0..G-1 in CUDA's order and are matched to the phxfs.ko node serving the
// same PCI device; nodes serving no GPU (pcibar) follow; a machine with
// neither has one host-memory device. PHXFS_HOST_DEVICES=N puts N
// host-memory devices after all of those (several devices on any machine:
// tests, and a GPU machine's host devices beside its GPUs).
#include "core/device.hpp"
#include "core/error.hpp"
#include "core/fork.hpp"
#include "memory/numa.hpp"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <mutex>

namespace phxfs::core {

namespace {

struct NodeSeen {
    int index;
    phxfs_ioctl_info info{};
    std::string bus_id;
    std::string error; // why the node cannot be used, empty if it can
    bool claimed = false;
};

// The first word of attribute name of node i in sysfs (readable by anyone,
// unlike the node): "provider" is "pcibar" or "nvidia", "pci" the PCI address.
std::string sysfs_word(int i, const char *name) {
    std::ifstream in("/sys/class/" PHXFS_DEV_PREFIX "/" PHXFS_DEV_PREFIX + std::to_string(i) + "/" +
                     name);
    std::string s;
    in >> s;
    return s;
}

std::vector<NodeSeen> scan_nodes() {
    std::vector<NodeSeen> nodes;
    for (int i = 0; i < PHXFS_MAX_DEVICES; ++i) {
        if (::access(kmod_node_path(i).c_str(), F_OK) != 0)
            continue;
        NodeSeen n;
        n.index = i;
        try {
            KmodNode node(i);
            n.info = node.info();
            n.bus_id = node.pci_bus_id();
        } catch (const Error &e) {
            n.error = e.what();
            n.bus_id = sysfs_word(i, "pci");
        }
        nodes.push_back(std::move(n));
    }
    return nodes;
}

// The node serving the GPU at bus_id, or why there is none.
int match_node(std::vector<NodeSeen> &nodes, const std::string &bus_id, std::string &why) {
    for (NodeSeen &n : nodes) {
        if (n.error.empty() && n.bus_id == bus_id) {
            n.claimed = true;
            why.clear();
            return n.index;
        }
    }
    why = "no /dev/phxfsN serves this GPU (PCI " + bus_id + ")";
    // phxfs.ko says what its nvidia provider found (kmod/nvidia.c).
    if (std::ifstream st("/sys/module/phxfs/parameters/nvidia_status"); st) {
        std::string s;
        std::getline(st, s);
        if (!s.empty())
            why += ": the module's nvidia provider: " + s;
    }
    for (const NodeSeen &n : nodes)
        if (!n.error.empty())
            why = n.error; // a node we could not open may be this GPU's
    if (nodes.empty())
        why = "phxfs kernel module not loaded (no /dev/phxfs*)";
    return -1;
}

// How many host-memory devices PHXFS_HOST_DEVICES asks for; -1 when unset.
int host_devices_from_env() {
    constexpr long kMax = 64;
    const char *v = std::getenv("PHXFS_HOST_DEVICES");
    if (!v || !*v)
        return -1;
    char *end = nullptr;
    errno = 0;
    const long n = std::strtol(v, &end, 10);
    if (errno || *end || n < 0 || n > kMax)
        fail(EINVAL, std::string("PHXFS_HOST_DEVICES='") + v + "': expected a number within 0.." +
                         std::to_string(kMax));
    return static_cast<int>(n);
}

std::vector<std::unique_ptr<Device>> discover() {
    const int host_devices = host_devices_from_env();
    std::vector<std::unique_ptr<Device>> out;
    std::vector<NodeSeen> nodes = scan_nodes();
    for (const GpuInfo &g : cuda_gpus()) {
        const int id = static_cast<int>(out.size());
        std::string why;
        const int index = match_node(nodes, g.pci_bus_id, why);
        out.push_back(
            std::make_unique<Device>(id, PHXFS_DEVICE_CUDA, id, index, g.name, g.pci_bus_id, why));
        for (const NodeSeen &n : nodes)
            if (n.index == index)
                out.back()->set_node_flags(n.info.flags);
        out.back()->set_numa_node(pci_numa_node(g.pci_bus_id));
    }
    for (const NodeSeen &n : nodes) {
        if (n.claimed)
            continue;
        // A node we cannot open is a device of its own only if it serves a
        // BAR; a GPU's node is that GPU's (its error is the GPU's why).
        const bool pcibar = n.error.empty() ? n.info.provider == PHXFS_PROVIDER_PCIBAR
                                            : sysfs_word(n.index, "provider") == "pcibar";
        if (!pcibar)
            continue;
        const int id = static_cast<int>(out.size());
        out.push_back(std::make_unique<Device>(id, PHXFS_DEVICE_PCIBAR, -1, n.index,
                                               "pcibar " + n.bus_id, n.bus_id, n.error));
        out.back()->set_node_flags(n.info.flags);
        out.back()->set_numa_node(pci_numa_node(n.bus_id));
    }
    for (int i = 0, n = host_devices < 0 && out.empty() ? 1 : host_devices; i < n; ++i)
        out.push_back(std::make_unique<Device>(static_cast<int>(out.size()), PHXFS_DEVICE_HOST, -1,
                                               -1, "host memory", "",
                                               "host memory is not device memory"));
    if (out.empty()) // PHXFS_HOST_DEVICES=0 on a machine with nothing else
        out.push_back(std::make_unique<Device>(0, PHXFS_DEVICE_HOST, -1, -1, "host memory", "",
                                               "host memory is not device memory"));
    return out;
}

} // namespace

// Built once, never destroyed (devices own CUDA resources and threads).
static std::vector<std::unique_ptr<Device>> *device_table = nullptr;

std::vector<std::unique_ptr<Device>> &devices() {
    static std::once_flag once;
    std::call_once(once, [] {
        device_table = new std::vector<std::unique_ptr<Device>>(discover());
        install_fork_handler();
    });
    return *device_table;
}

void devices_after_fork_child() {
    if (!device_table)
        return;
    for (auto &d : *device_table)
        d = d.release()->fresh_for_child(); // the parent's state stays as it is
}

Device &device(int id) {
    auto &t = devices();
    if (id < 0 || static_cast<size_t>(id) >= t.size())
        fail(ENODEV, "no device " + std::to_string(id) + " (this machine has " +
                         std::to_string(t.size()) + ")");
    return *t[static_cast<size_t>(id)];
}

} // namespace phxfs::core
