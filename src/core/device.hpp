// Devices: what each device id is, its open session, its registrations and
// the engines that move its data.
//
// Lifetimes. An open device owns one Session (backend, compat engine, module
// node). A request holds a reference to the session and, when its buffer is
// registered, a use of that registration, for its whole length; it holds no
// lock while it moves data. So a phxfs_regmem/deregmem never waits behind
// I/O on other buffers, and I/O never waits behind a registration:
// deregmem takes the registration out of the table, waits only for the
// requests using that one registration, then unmaps it; meanwhile the
// registration stays in the table (an overlapping regmem is refused) but no
// request starts using it. phxfs_close does the same for every registration;
// the session goes when its last request does.
#pragma once

#include "core/stats.hpp"
#include "engine/compat.hpp"
#include "engine/workers.hpp"
#include "kernel/kmod.hpp"
#include "memory/memory.hpp"

#include <phxfs/phxfs.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace phxfs::core {

struct GroupRequest;

// What an open device owns. Nothing of it is shared with another device:
// its staging memory and copy streams (compat's lanes), its workers and its
// backend (a GPU's primary context) are its own, so devices never wait for
// one another.
struct Session {
    std::unique_ptr<Backend> backend;
    std::unique_ptr<WorkerPool> workers;  // the threads that join this device's requests
    std::unique_ptr<CompatEngine> compat; // uses *backend and *workers
    std::unique_ptr<KmodNode> node;       // null where the direct path cannot run
    std::string why_not_direct;           // empty when node serves the device
};

struct Registration {
    uintptr_t start = 0; // the caller's address
    size_t len = 0;
    char *target = nullptr;               // what phxfs_regmem returned
    std::shared_ptr<Session> session;     // keeps the node open while mapped
    std::unique_ptr<KmodMapping> mapping; // set when the direct path serves it
    std::atomic<unsigned> users{0};       // requests using target now
    bool dying = false;                   // deregmem under way: no new use (guarded by Device::m_)
};

// A request's use of a registration: deregmem waits until none is left.
class RegistrationUse {
  public:
    RegistrationUse() = default;
    explicit RegistrationUse(std::shared_ptr<Registration> reg);
    RegistrationUse(RegistrationUse &&) noexcept = default;
    RegistrationUse &operator=(RegistrationUse &&o) noexcept;
    ~RegistrationUse() { release(); }
    const Registration *get() const { return reg_.get(); }

  private:
    void release();
    std::shared_ptr<Registration> reg_;
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
    // A read (write = false) or write of n bytes at file offset off, on the
    // caller's fd as it is now, or through a file handle's File.
    size_t io(bool write, int fd, const void *buf, size_t n, uint64_t off) {
        return io(write, fd, nullptr, buf, n, off);
    }
    size_t io(bool write, File &file, const void *buf, size_t n, uint64_t off) {
        return io(write, file.fd(), &file, buf, n, off);
    }

    // Many requests at once (a batch's group): each completes alone, in its
    // GroupRequest (core/request.hpp).
    void io_group(GroupRequest *reqs, size_t n);

    void info(phxfs_device_info &out) const;
    // What the module's node says of its pages (discovery; PHXFS_INFO_*).
    void set_node_flags(uint32_t flags) { node_flags_ = flags; }
    // The NUMA node of the device's PCI device (discovery; -1: none known):
    // its staging memory is allocated there.
    void set_numa_node(int node) { numa_node_ = node; }
    void stats(phxfs_stats &out) const;
    void reset_stats() { stats_.reset(); }
    // A request served outside io()/io_group() (core/stream_io): its bytes
    // and time on `path`, or one more error.
    void count(phxfs_path path, bool write, uint64_t bytes, uint64_t ns) {
        stats_.add(path, write, bytes, ns);
    }
    void count_error() { stats_.error(); }
    // The configuration changed: idle staging memory over the new budget goes.
    void config_changed(size_t staging_bytes);

    // In a child of fork(): the same device as discovered, closed, knowing
    // that the parent had it open. The parent's state (mappings the kernel
    // did not copy, CUDA objects the child cannot use) is never touched.
    std::unique_ptr<Device> fresh_for_child() const;

  private:
    // The open session, or throws EBADF; call with m_ held.
    const std::shared_ptr<Session> &session_locked() const;
    std::shared_ptr<Session> make_session();
    // Where [p, p + n) lives; known: what the memory is, when checked already.
    Resolved resolve(Session &s, const Registration *reg, char *p, size_t n,
                     const MemInfo *known = nullptr) const;
    size_t io(bool write, int fd, File *file, const void *buf, size_t n, uint64_t off);
    size_t transfer(bool write, File &file, char *p, size_t n, uint64_t off);
    void failed(bool write, int fd, size_t n, uint64_t off, const std::exception &e);
    std::unique_ptr<KmodMapping> map(Session &s, uintptr_t addr, size_t len) const;
    static void drop(const std::shared_ptr<Registration> &reg);

    const int id_;
    const phxfs_device_kind kind_;
    const int cuda_ordinal_;
    const int kmod_index_;
    const std::string name_, pci_bus_id_;
    const std::string why_not_direct_; // from discovery; empty if the module serves it
    bool opened_before_fork_ = false;  // in a child: the parent had it open
    uint32_t node_flags_ = 0;
    int numa_node_ = -1;

    // reg_ops_ serialises the calls that change the session or the
    // registrations (open, close, regmem, deregmem), which may take long
    // (pinning, mapping). m_ guards the fields below for moments only.
    std::mutex reg_ops_;
    mutable std::mutex m_;
    int opens_ = 0;
    std::shared_ptr<Session> session_;
    std::atomic<int> node_fd_{-1}; // the session's module node, for a child to close
    std::map<uintptr_t, std::shared_ptr<Registration>> regs_;
    Stats stats_;
};

// The device table, built once on first use.
std::vector<std::unique_ptr<Device>> &devices();
// The device of id, or throws ENODEV.
Device &device(int id);
// In a child of fork(): every device as discovered, closed (fork.hpp).
void devices_after_fork_child();

} // namespace phxfs::core
