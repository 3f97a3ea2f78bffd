#include "kernel/kmod.hpp"

#include "core/error.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace phxfs::core {

namespace {
// One MAP ioctl maps at most this much; larger registrations are several MAPs
// into one VMA, so the caller still sees one contiguous address.
constexpr uint64_t kMapStep = 1ull << 30;

// What the module means by the errors only MAP returns (kmod/map.c).
std::string map_error_hint(int err) {
    switch (err) {
    case EBUSY:
        return " (the device range is held by another open file of the device, or still "
               "referenced by one that gave it up)";
    case EOPNOTSUPP:
        return " (the GPU driver refuses persistent P2P pages, as on MIG-enabled GPUs and vGPU)";
    case ENOSPC:
        return " (too many mappings on one open file of the device)";
    default:
        return "";
    }
}
} // namespace

std::string kmod_node_path(int index) {
    return "/dev/" PHXFS_DEV_PREFIX + std::to_string(index);
}

KmodNode::KmodNode(int index) : index_(index) {
    const std::string path = kmod_node_path(index);
    fd_ = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd_)
        fail_errno("cannot open " + path);
    info_.size = sizeof(info_);
    if (::ioctl(fd_.get(), PHXFS_IOCTL_INFO, &info_) < 0) {
        if (errno == ENOTTY || errno == EINVAL)
            fail(EPROTO, path + " does not speak phxfs ABI version " +
                             std::to_string(PHXFS_ABI_VERSION) + " (module and library differ)");
        fail_errno("PHXFS_IOCTL_INFO on " + path);
    }
    if (info_.abi_version != PHXFS_ABI_VERSION)
        fail(EPROTO, path + ": module ABI version " + std::to_string(info_.abi_version) +
                         ", library ABI version " + std::to_string(PHXFS_ABI_VERSION) +
                         ": install matching versions");
    info_.name[sizeof(info_.name) - 1] = '\0';
}

std::string KmodNode::pci_bus_id() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04x:%02x:%02x.%x", info_.pci_domain, info_.pci_bus,
                  info_.pci_devfn >> 3, info_.pci_devfn & 7);
    return buf;
}

std::unique_ptr<KmodMapping> KmodNode::map(uint64_t dev_addr, uint64_t len) {
    void *va = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (va == MAP_FAILED)
        fail_errno("mmap of " + kmod_node_path(index_) + " (" + std::to_string(len) + " bytes)");
    auto m = std::make_unique<KmodMapping>(fd_.get(), va, len);
    for (uint64_t done = 0; done < len; done += kMapStep) {
        const uint64_t step = std::min(kMapStep, len - done);
        m->add(dev_addr + done, reinterpret_cast<uint64_t>(va) + done, step);
    }
    return m;
}

void KmodMapping::add(uint64_t dev_addr, uint64_t vaddr, uint64_t len) {
    phxfs_ioctl_map req{};
    req.size = sizeof(req);
    req.dev_addr = dev_addr;
    req.len = len;
    req.vaddr = vaddr;
    if (::ioctl(fd_, PHXFS_IOCTL_MAP, &req) < 0) {
        const int err = errno;
        char addr[24];
        std::snprintf(addr, sizeof addr, "%llx", (unsigned long long)dev_addr);
        fail(err, "PHXFS_IOCTL_MAP of " + std::to_string(len) + " bytes at device address 0x" +
                      addr + ": " + std::strerror(err) + map_error_hint(err));
    }
    pieces_.push_back({dev_addr, vaddr, len});
}

KmodMapping::~KmodMapping() {
    for (const Piece &p : pieces_) {
        phxfs_ioctl_map req{};
        req.size = sizeof(req);
        req.dev_addr = p.dev_addr;
        req.len = p.len;
        req.vaddr = p.vaddr;
        ::ioctl(fd_, PHXFS_IOCTL_UNMAP, &req); // munmap below tears down what remains
    }
    ::munmap(va_, len_);
}

} // namespace phxfs::core
