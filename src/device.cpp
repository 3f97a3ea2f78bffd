#include "device.hpp"

#include "config.hpp"
#include "cuda_driver.hpp"
#include "direct.hpp"
#include "error.hpp"
#include "no_destructor.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace phxfs::core {

namespace {

std::string hex(uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

bool overflows(uintptr_t a, size_t n) {
    return a + n < a;
}

// Errors with which the kernel refuses O_DIRECT on a mapping, as opposed to
// failing the I/O itself.
bool refused_direct(int err) {
    return err == EINVAL || err == EFAULT || err == EOPNOTSUPP;
}

void copy_str(char *dst, size_t cap, const std::string &s) {
    std::strncpy(dst, s.c_str(), cap - 1);
    dst[cap - 1] = '\0';
}

} // namespace

Device::Device(int id, phxfs_device_kind kind, int cuda_ordinal, int kmod_index, std::string name,
               std::string pci_bus_id, std::string why_not_direct)
    : id_(id), kind_(kind), cuda_ordinal_(cuda_ordinal), kmod_index_(kmod_index),
      name_(std::move(name)), pci_bus_id_(std::move(pci_bus_id)),
      why_not_direct_(std::move(why_not_direct)) {}

Device::~Device() = default;

void Device::check_open_locked() const {
    if (opens_ == 0)
        fail(EBADF, "device " + std::to_string(id_) + " is not open (call phxfs_open first)");
}

void Device::open() {
    std::unique_lock lock(m_);
    if (opens_ > 0) {
        ++opens_;
        return;
    }
    auto backend =
        kind_ == PHXFS_DEVICE_CUDA ? make_cuda_backend(cuda_ordinal_) : make_host_backend();
    std::unique_ptr<KmodNode> node;
    if (kmod_index_ >= 0 && why_not_direct_.empty()) {
        try {
            node = std::make_unique<KmodNode>(kmod_index_);
        } catch (const Error &e) {
            // A pcibar device is reachable only through the module.
            if (kind_ == PHXFS_DEVICE_PCIBAR || config().mode == PHXFS_MODE_DIRECT)
                throw;
            why_not_direct_ = e.what();
        }
    }
    compat_ = std::make_unique<CompatEngine>(*backend);
    backend_ = std::move(backend);
    node_ = std::move(node);
    opens_ = 1;
}

void Device::release_all_locked() {
    regs_.clear(); // unmaps every mapping
    compat_.reset();
    node_.reset();
    backend_.reset();
}

void Device::close() {
    std::unique_lock lock(m_);
    check_open_locked();
    if (--opens_ == 0)
        release_all_locked();
}

std::unique_ptr<KmodMapping> Device::map_locked(uintptr_t addr, size_t len) {
    const uint64_t page = node_->info().page_size;
    const uint64_t a0 = align_down(addr, page), a1 = align_up(addr + len, page);
    if (a1 < a0 || (kind_ == PHXFS_DEVICE_PCIBAR && a1 > node_->info().bar_size))
        fail(EINVAL, "range " + hex(addr) + "+" + std::to_string(len) + " lies outside the " +
                         std::to_string(node_->info().bar_size) + "-byte BAR");
    return node_->map(a0, a1 - a0);
}

void *Device::regmem(const void *addr, size_t len) {
    const auto a = reinterpret_cast<uintptr_t>(addr);
    if (len == 0)
        fail(EINVAL, "cannot register zero bytes");
    if (overflows(a, len))
        fail(EINVAL, "range " + hex(a) + "+" + std::to_string(len) + " overflows");
    std::unique_lock lock(m_);
    check_open_locked();
    auto next = regs_.lower_bound(a);
    if (next != regs_.end() && next->first < a + len)
        fail(EEXIST, "range overlaps the registration at " + hex(next->first));
    if (next != regs_.begin()) {
        const Registration &prev = std::prev(next)->second;
        if (prev.start + prev.len > a)
            fail(EEXIST, "range overlaps the registration at " + hex(prev.start));
    }

    Registration reg;
    reg.start = a;
    reg.len = len;
    reg.target = const_cast<char *>(static_cast<const char *>(addr));
    if (kind_ == PHXFS_DEVICE_PCIBAR) {
        reg.mapping = map_locked(a, len);
    } else {
        backend_->check_range(addr, len);
        const bool device_memory = classify(addr).kind == MemKind::cuda;
        if (node_ && device_memory && config().mode != PHXFS_MODE_COMPAT) {
            try {
                reg.mapping = map_locked(a, len);
            } catch (const Error &) {
                if (config().mode == PHXFS_MODE_DIRECT)
                    throw;
                stats_.fallback();
            }
        } else if (config().mode == PHXFS_MODE_DIRECT && device_memory) {
            fail(ENOTSUP, "direct mode: " + why_not_direct_);
        }
    }
    if (reg.mapping) {
        const uint64_t page = node_->info().page_size;
        reg.target = reg.mapping->address() + (a - align_down(a, page));
    }
    void *target = reg.target;
    regs_.emplace(a, std::move(reg));
    return target;
}

void Device::deregmem(const void *addr, size_t len) {
    std::unique_lock lock(m_);
    check_open_locked();
    auto it = regs_.find(reinterpret_cast<uintptr_t>(addr));
    if (it == regs_.end() || it->second.len != len)
        fail(EINVAL, "no registration of " + hex(reinterpret_cast<uintptr_t>(addr)) + "+" +
                         std::to_string(len) + " on device " + std::to_string(id_));
    regs_.erase(it);
}

Resolved Device::resolve_locked(char *p, size_t n) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    if (overflows(a, n))
        fail(EINVAL, "buffer range overflows");
    const Registration *reg = nullptr;
    if (auto it = regs_.upper_bound(a); it != regs_.begin()) {
        const Registration &r = std::prev(it)->second;
        if (r.start <= a && a + n <= r.start + r.len)
            reg = &r;
    }
    Resolved out;
    if (kind_ == PHXFS_DEVICE_PCIBAR) {
        if (!reg)
            fail(EFAULT, "BAR range " + hex(a) + "+" + std::to_string(n) +
                             " is not inside a registration (phxfs_regmem)");
        out.buf = reg->target + (a - reg->start); // the CPU reaches the BAR through the mapping
        out.direct = out.buf;
        return out;
    }
    if (!p)
        fail(EFAULT, "NULL buffer");
    out.kind = backend_->check_range(p, n).kind; // classifies p once
    out.buf = p;
    if (reg && reg->mapping)
        out.direct = reg->target + (a - reg->start);
    return out;
}

size_t Device::transfer(bool write, int fd, char *p, size_t n, uint64_t off) {
    std::shared_lock lock(m_);
    check_open_locked();
    const FileInfo fi = inspect_fd(fd, write);
    if (n == 0)
        return 0;
    const Resolved r = resolve_locked(p, n);
    const phxfs_mode mode = config().mode;

    uint64_t end = off + n;
    if (!write && fi.size)
        end = std::min<uint64_t>(end, std::max<uint64_t>(*fi.size, off));

    // The direct part: whole 4 KiB blocks whose device address is aligned too.
    uint64_t ma = off, mb = off;
    UniqueFd twin;
    // Why the direct path does not serve the request; built only for the
    // error of direct mode (the common compat path allocates nothing).
    std::string why;
    const char *why_not = nullptr;
    if (mode == PHXFS_MODE_COMPAT) {
        why_not = "compat mode";
    } else if (!r.direct) {
        why_not = why_not_direct_.empty() ? "buffer is not registered with phxfs_regmem"
                                          : why_not_direct_.c_str();
    } else if ((reinterpret_cast<uintptr_t>(r.direct) - off) % kAlign) {
        why_not = "buffer address and file offset differ in alignment within 4 KiB";
    } else {
        why_not = why_not_direct_.c_str();
        ma = std::min(align_up(off, kAlign), end);
        mb = std::max(align_down(end, kAlign), ma);
        if (ma < mb && !fi.direct) {
            try {
                twin = reopen_fd(fd, true);
            } catch (const Error &e) {
                why = std::string("file refuses O_DIRECT: ") + e.what();
                ma = mb = off;
            }
        }
    }
    if (mode == PHXFS_MODE_DIRECT && (ma != off || mb != end))
        fail(ENOTSUP, "direct mode: " +
                          (ma == mb ? (why.empty() ? std::string(why_not) : why)
                                    : std::string("unaligned head or tail (offsets and lengths "
                                                  "must be 4 KiB multiples)")));
    if (direct_capable() && (ma != off || mb != end))
        stats_.fallback();

    struct Segment {
        uint64_t a, b;
        bool direct;
    };
    const Segment segs[] = {{off, ma, false}, {ma, mb, true}, {mb, end, false}};
    uint64_t done_to = off;
    auto compat = [&](uint64_t a, size_t len) -> size_t {
        if (write) {
            compat_->write(fi, r.buf + (a - off), r.kind, len, a);
            return len;
        }
        return compat_->read(fi, r.buf + (a - off), r.kind, len, a);
    };
    auto direct = [&](uint64_t a, size_t len) -> size_t {
        const int dfd = twin ? twin.get() : fd;
        char *mapped = r.direct + (a - off);
        if (write) {
            direct_write(dfd, mapped, len, a);
            return len;
        }
        return direct_read(dfd, mapped, len, a);
    };
    for (const Segment &s : segs) {
        if (s.a == s.b)
            continue;
        const uint64_t t0 = now_ns();
        const size_t len = s.b - s.a;
        phxfs_path path = s.direct ? PHXFS_PATH_DIRECT : PHXFS_PATH_COMPAT;
        size_t got = 0;
        try {
            got = s.direct ? direct(s.a, len) : compat(s.a, len);
        } catch (const Error &e) {
            // The kernel may still refuse O_DIRECT on the mapping (a file
            // system without direct I/O for this file, GUP refusing device
            // pages on a P2PDMA kernel): auto mode bounces the segment.
            if (!s.direct || mode != PHXFS_MODE_AUTO || !refused_direct(e.err()))
                throw;
            stats_.fallback();
            path = PHXFS_PATH_COMPAT;
            got = compat(s.a, len);
        }
        stats_.add(path, write, got, now_ns() - t0);
        done_to = s.a + got;
        if (got < len)
            break; // end of file
    }
    return static_cast<size_t>(done_to - off);
}

size_t Device::read(int fd, void *buf, size_t n, uint64_t off) {
    try {
        return transfer(false, fd, static_cast<char *>(buf), n, off);
    } catch (...) {
        stats_.error();
        throw;
    }
}

size_t Device::write(int fd, const void *buf, size_t n, uint64_t off) {
    try {
        return transfer(true, fd, const_cast<char *>(static_cast<const char *>(buf)), n, off);
    } catch (...) {
        stats_.error();
        throw;
    }
}

void Device::info(phxfs_device_info &out) const {
    out.kind = kind_;
    out.kmod_index = kmod_index_;
    std::shared_lock lock(m_);
    out.direct = direct_capable() ? 1 : 0;
    copy_str(out.name, sizeof out.name, name_);
    copy_str(out.pci_bus_id, sizeof out.pci_bus_id, pci_bus_id_);
    copy_str(out.why_not_direct, sizeof out.why_not_direct, why_not_direct_);
}

void Device::stats(phxfs_stats &out) const {
    std::shared_lock lock(m_);
    stats_.snapshot(out, regs_.size());
}

} // namespace phxfs::core
