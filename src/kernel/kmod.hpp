// User side of the phxfs.ko ABI (include/phxfs/phxfs_ioctl.h): a device node
// and RAII mappings of device memory into this process.
#pragma once

#include "engine/fileio.hpp"

#include <phxfs/phxfs_ioctl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace phxfs::core {

std::string kmod_node_path(int index);

// One mapping of device memory: one VMA of the node, filled by MAP ioctls.
// The destructor unmaps (UNMAP, then munmap).
class KmodMapping {
  public:
    KmodMapping(int node_fd, void *va, size_t len) : fd_(node_fd), va_(va), len_(len) {}
    ~KmodMapping();
    KmodMapping(const KmodMapping &) = delete;
    KmodMapping &operator=(const KmodMapping &) = delete;
    char *address() const { return static_cast<char *>(va_); }
    size_t length() const { return len_; }
    void add(uint64_t dev_addr, uint64_t vaddr, uint64_t len); // one MAP ioctl

  private:
    struct Piece {
        uint64_t dev_addr, vaddr, len;
    };
    int fd_;
    void *va_;
    size_t len_;
    std::vector<Piece> pieces_;
};

class KmodNode {
  public:
    // Opens /dev/phxfsN and checks the module's ABI version (EPROTO).
    explicit KmodNode(int index);
    const phxfs_ioctl_info &info() const { return info_; }
    int index() const { return index_; }
    int fd() const { return fd_.get(); }
    std::string pci_bus_id() const;
    // Maps device memory [dev_addr, dev_addr + len), both multiples of the
    // provider's page size, as one contiguous user address range.
    std::unique_ptr<KmodMapping> map(uint64_t dev_addr, uint64_t len);

  private:
    int index_;
    UniqueFd fd_;
    phxfs_ioctl_info info_{};
};

} // namespace phxfs::core
