// Devices: what each device id is, its open sessions, its registrations and
// the engines that move its data.
#pragma once

#include "compat.hpp"
#include "kmod.hpp"
#include "memory.hpp"
#include "stats.hpp"

#include <phxfs/phxfs.h>

#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

namespace phxfs::core {

struct Registration {
    uintptr_t start = 0; // the caller's address
    size_t len = 0;
    char *target = nullptr;               // what phxfs_regmem returned
    std::unique_ptr<KmodMapping> mapping; // set when the direct path serves it
};

// Where a request's bytes live once its buffer is resolved.
struct Resolved {
    char *buf = nullptr;          // the memory the compat path copies to and from
    MemKind kind = MemKind::host; // which copy engine reaches buf
    char *direct = nullptr;       // mapped address for O_DIRECT, or null
};

class Device {
  public:
    Device(int id, phxfs_device_kind kind, int cuda_ordinal, int kmod_index, std::string name,
           std::string pci_bus_id, std::string why_not_direct);
    ~Device();

    void open();
    void close();
    void *regmem(const void *addr, size_t len);
    void deregmem(const void *addr, size_t len);
    size_t read(int fd, void *buf, size_t n, uint64_t off);
    size_t write(int fd, const void *buf, size_t n, uint64_t off);

    void info(phxfs_device_info &out) const;
    void stats(phxfs_stats &out) const;
    void reset_stats() { stats_.reset(); }

  private:
    void check_open_locked() const;
    bool direct_capable() const { return kmod_index_ >= 0 && why_not_direct_.empty(); }
    Resolved resolve_locked(char *p, size_t n);
    size_t transfer(bool write, int fd, char *p, size_t n, uint64_t off);
    std::unique_ptr<KmodMapping> map_locked(uintptr_t addr, size_t len);
    void release_all_locked();

    const int id_;
    const phxfs_device_kind kind_;
    const int cuda_ordinal_;
    const int kmod_index_;
    const std::string name_, pci_bus_id_;
    std::string why_not_direct_;

    // Exclusive for open/close/regmem/deregmem; shared for the length of an
    // I/O, so memory cannot be deregistered under a request.
    mutable std::shared_mutex m_;
    int opens_ = 0;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<CompatEngine> compat_;
    std::unique_ptr<KmodNode> node_;
    std::map<uintptr_t, Registration> regs_;
    Stats stats_;
};

// The device table, built once on first use.
std::vector<std::unique_ptr<Device>> &devices();
// The device of id, or throws ENODEV.
Device &device(int id);

} // namespace phxfs::core
