#include "core/device.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/no_destructor.hpp"
#include "core/request.hpp"
#include "core/trace.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace phxfs::core {

namespace {

bool overflows(uintptr_t a, size_t n) {
    return a + n < a;
}

void copy_str(char *dst, size_t cap, const std::string &s) {
    std::strncpy(dst, s.c_str(), cap - 1);
    dst[cap - 1] = '\0';
}

} // namespace

RegistrationUse::RegistrationUse(std::shared_ptr<Registration> reg) : reg_(std::move(reg)) {
    if (reg_)
        reg_->users.fetch_add(1);
}

RegistrationUse &RegistrationUse::operator=(RegistrationUse &&o) noexcept {
    if (this != &o) {
        release();
        reg_ = std::move(o.reg_);
    }
    return *this;
}

void RegistrationUse::release() {
    if (reg_ && reg_->users.fetch_sub(1) == 1)
        reg_->users.notify_all();
    reg_.reset();
}

Device::Device(int id, phxfs_device_kind kind, int cuda_ordinal, int kmod_index, std::string name,
               std::string pci_bus_id, std::string why_not_direct)
    : id_(id), kind_(kind), cuda_ordinal_(cuda_ordinal), kmod_index_(kmod_index),
      name_(std::move(name)), pci_bus_id_(std::move(pci_bus_id)),
      why_not_direct_(std::move(why_not_direct)) {}

Device::~Device() = default;

std::unique_ptr<Device> Device::fresh_for_child() const {
    auto d = std::make_unique<Device>(id_, kind_, cuda_ordinal_, kmod_index_, name_, pci_bus_id_,
                                      why_not_direct_);
    d->opened_before_fork_ = opened_before_fork_ || opens_ > 0;
    d->node_flags_ = node_flags_;
    d->numa_node_ = numa_node_;
    // The parent's node stays open in the parent; the child's copy of the
    // fd is of no use to it and would keep the module's file alive.
    if (const int fd = node_fd_.load(); fd >= 0)
        ::close(fd);
    return d;
}

const std::shared_ptr<Session> &Device::session_locked() const {
    if (opens_ == 0)
        fail(EBADF, "device " + std::to_string(id_) + " is not open" +
                        (opened_before_fork_
                             ? std::string(" in this process: the parent opened it before fork(), "
                                           "and a child starts with every device closed (call "
                                           "phxfs_open in the child)")
                             : std::string(" (call phxfs_open first)")));
    return session_;
}

std::shared_ptr<Session> Device::make_session() {
    auto s = std::make_shared<Session>();
    s->backend = kind_ == PHXFS_DEVICE_CUDA ? make_cuda_backend(cuda_ordinal_, numa_node_)
                                            : make_host_backend(numa_node_);
    s->why_not_direct = why_not_direct_;
    if (kmod_index_ >= 0 && why_not_direct_.empty()) {
        try {
            s->node = std::make_unique<KmodNode>(kmod_index_);
        } catch (const Error &e) {
            // A pcibar device is reachable only through the module.
            if (kind_ == PHXFS_DEVICE_PCIBAR || config().mode == PHXFS_MODE_DIRECT)
                throw;
            s->why_not_direct = e.what();
        }
    }
    s->workers = std::make_unique<WorkerPool>();
    s->compat = std::make_unique<CompatEngine>(*s->backend, *s->workers, stats_.staging_bytes());
    return s;
}

void Device::open() {
    std::lock_guard ops(reg_ops_);
    {
        std::lock_guard lock(m_);
        if (opens_ > 0) {
            ++opens_;
            return;
        }
    }
    auto s = make_session(); // may take long (CUDA context, module node): no m_
    std::lock_guard lock(m_);
    node_fd_ = s->node ? s->node->fd() : -1;
    session_ = std::move(s);
    opens_ = 1;
}

// Unmaps reg once no request uses it any more, here and now (a request's
// last reference may outlive its use by a moment). The caller has made sure
// that no new use can start (dying, or out of the table).
void Device::drop(const std::shared_ptr<Registration> &reg) {
    for (unsigned u; (u = reg->users.load()) != 0;)
        reg->users.wait(u);
    reg->mapping.reset();
    reg->session.reset();
}

void Device::close() {
    std::lock_guard ops(reg_ops_); // an open after us waits until all is unmapped
    std::map<uintptr_t, std::shared_ptr<Registration>> regs;
    std::shared_ptr<Session> session; // released last, outside m_
    {
        std::lock_guard lock(m_);
        session_locked();
        if (--opens_ > 0)
            return;
        regs.swap(regs_);
        session.swap(session_); // requests in flight hold their own reference
        node_fd_ = -1;
        for (auto &[addr, reg] : regs) {
            if (reg->dying)
                reg.reset(); // a deregmem under way drops it
            else
                reg->dying = true;
        }
    }
    for (auto &[addr, reg] : regs)
        if (reg)
            drop(reg);
}

std::unique_ptr<KmodMapping> Device::map(Session &s, uintptr_t addr, size_t len) const {
    const uint64_t page = s.node->info().page_size;
    const uint64_t a0 = align_down(addr, page), a1 = align_up(addr + len, page);
    if (a1 < a0 || (kind_ == PHXFS_DEVICE_PCIBAR && a1 > s.node->info().bar_size))
        fail(EINVAL, "range " + hex(addr) + "+" + std::to_string(len) + " lies outside the " +
                         std::to_string(s.node->info().bar_size) + "-byte BAR");
    return s.node->map(a0, a1 - a0);
}

void *Device::regmem(const void *addr, size_t len) {
    const auto a = reinterpret_cast<uintptr_t>(addr);
    if (len == 0)
        fail(EINVAL, "cannot register zero bytes");
    if (overflows(a, len))
        fail(EINVAL, "range " + hex(a) + "+" + std::to_string(len) + " overflows");
    std::lock_guard ops(reg_ops_); // the table cannot change until we insert
    auto reg = std::make_shared<Registration>();
    {
        std::lock_guard lock(m_);
        reg->session = session_locked();
        auto next = regs_.lower_bound(a);
        if (next != regs_.end() && next->first < a + len)
            fail(EEXIST, "range overlaps the registration at " + hex(next->first));
        if (next != regs_.begin()) {
            const Registration &prev = *std::prev(next)->second;
            if (prev.start + prev.len > a)
                fail(EEXIST, "range overlaps the registration at " + hex(prev.start));
        }
    }

    Session &s = *reg->session;
    reg->start = a;
    reg->len = len;
    reg->target = const_cast<char *>(static_cast<const char *>(addr));
    if (kind_ == PHXFS_DEVICE_PCIBAR) {
        reg->mapping = map(s, a, len);
    } else {
        s.backend->check_range(addr, len);
        const bool device_memory = classify(addr).kind == MemKind::cuda;
        if (s.node && device_memory && config().mode != PHXFS_MODE_COMPAT) {
            try {
                reg->mapping = map(s, a, len);
            } catch (const Error &) {
                if (config().mode == PHXFS_MODE_DIRECT)
                    throw;
                stats_.fallback();
            }
        } else if (config().mode == PHXFS_MODE_DIRECT && device_memory) {
            fail(ENOTSUP, "direct mode: " + s.why_not_direct);
        }
    }
    if (reg->mapping) {
        const uint64_t page = s.node->info().page_size;
        reg->target = reg->mapping->address() + (a - align_down(a, page));
    }
    void *target = reg->target;
    std::lock_guard lock(m_);
    regs_.emplace(a, std::move(reg));
    return target;
}

void Device::deregmem(const void *addr, size_t len) {
    const auto a = reinterpret_cast<uintptr_t>(addr);
    std::shared_ptr<Registration> reg;
    {
        std::lock_guard ops(reg_ops_);
        std::lock_guard lock(m_);
        session_locked();
        auto it = regs_.find(a);
        if (it == regs_.end() || it->second->len != len || it->second->dying)
            fail(EINVAL, "no registration of " + hex(a) + "+" + std::to_string(len) +
                             " on device " + std::to_string(id_) +
                             (it != regs_.end() && it->second->dying
                                  ? " (another thread is deregistering it)"
                                  : ""));
        reg = it->second;
        reg->dying = true;
    }
    // Waits for the requests using this registration only, holding no lock:
    // other registrations and requests carry on.
    drop(reg);
    std::lock_guard lock(m_);
    if (auto it = regs_.find(a); it != regs_.end() && it->second == reg)
        regs_.erase(it);
}

Resolved Device::resolve(Session &s, const Registration *reg, char *p, size_t n,
                         const MemInfo *known) const {
    const auto a = reinterpret_cast<uintptr_t>(p);
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
    out.kind = known ? known->kind : s.backend->check_range(p, n).kind; // classifies p once
    out.buf = p;
    if (reg && reg->mapping)
        out.direct = reg->target + (a - reg->start);
    return out;
}

size_t Device::transfer(bool write, File &file, char *p, size_t n, uint64_t off) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    std::shared_ptr<Session> session;
    RegistrationUse use; // the registration holding [p, p + n), if any
    {
        std::lock_guard lock(m_);
        session = session_locked();
        if (auto it = regs_.upper_bound(a); it != regs_.begin() && !overflows(a, n)) {
            const auto &r = std::prev(it)->second;
            if (!r->dying && r->start <= a && a + n <= r->start + r->len)
                use = RegistrationUse(r);
        }
    }
    const FileInfo info = file.for_request(write);
    if (n == 0)
        return 0;
    if (overflows(a, n))
        fail(EINVAL, "buffer range overflows");
    const Request req{write, id_, file, info, resolve(*session, use.get(), p, n), n, off};
    return run_request(*session, stats_, req);
}

size_t Device::io(bool write, int fd, File *file, const void *buf, size_t n, uint64_t off) {
    char *p = const_cast<char *>(static_cast<const char *>(buf));
    try {
        if (file)
            return transfer(write, *file, p, n, off);
        File once(fd);
        return transfer(write, once, p, n, off);
    } catch (const std::exception &e) {
        failed(write, fd, n, off, e);
        throw;
    }
}

void Device::io_group(GroupRequest *reqs, size_t n) {
    std::shared_ptr<Session> session;
    {
        std::lock_guard lock(m_);
        try {
            session = session_locked();
        } catch (...) {
            for (size_t i = 0; i < n; ++i)
                reqs[i].error = std::current_exception();
        }
        for (size_t i = 0; session && i < n; ++i) {
            GroupRequest &g = reqs[i];
            const auto a = reinterpret_cast<uintptr_t>(g.buf);
            if (auto it = regs_.upper_bound(a); it != regs_.begin() && !overflows(a, g.n)) {
                const auto &r = std::prev(it)->second;
                if (!r->dying && r->start <= a && a + g.n <= r->start + r->len)
                    g.use = RegistrationUse(r);
            }
        }
    }
    // A batch's requests mostly share a file and a buffer (a base pointer at
    // several offsets): the file is looked at once per run of requests on
    // it, and a buffer's memory checked once for the span its requests use
    // (each request alone only where that check fails, for its own error).
    const File *info_of = nullptr;
    for (size_t i = 0; session && i < n; ++i) {
        GroupRequest &g = reqs[i];
        try {
            if (g.file == info_of && i > 0 && !reqs[i - 1].error && reqs[i - 1].write == g.write) {
                g.info = reqs[i - 1].info;
            } else {
                g.info = g.file->for_request(g.write);
                info_of = g.file;
            }
            if (g.n == 0) {
                g.done = true;
                continue;
            }
            if (overflows(reinterpret_cast<uintptr_t>(g.buf), g.n))
                fail(EINVAL, "buffer range overflows");
        } catch (...) {
            g.error = std::current_exception();
        }
    }
    for (size_t a = 0; session && a < n;) {
        // [a, b): the run of requests on one base pointer, and their span.
        size_t b = a;
        uintptr_t lo = UINTPTR_MAX, hi = 0;
        for (; b < n && reqs[b].base == reqs[a].base; ++b) {
            if (reqs[b].done || reqs[b].error)
                continue;
            lo = std::min(lo, reinterpret_cast<uintptr_t>(reqs[b].buf));
            hi = std::max(hi, reinterpret_cast<uintptr_t>(reqs[b].buf) + reqs[b].n);
        }
        std::optional<MemInfo> span;
        if (kind_ != PHXFS_DEVICE_PCIBAR && lo < hi && b - a > 1) {
            try {
                span = session->backend->check_range(reinterpret_cast<const void *>(lo), hi - lo);
            } catch (const Error &) { // some request is wrong: each checks itself
            }
        }
        for (size_t i = a; i < b; ++i) {
            GroupRequest &g = reqs[i];
            if (g.done || g.error)
                continue;
            try {
                g.where = resolve(*session, g.use.get(), g.buf, g.n, span ? &*span : nullptr);
            } catch (...) {
                g.error = std::current_exception();
            }
        }
        a = b;
    }
    if (session)
        run_group(*session, stats_, id_, reqs, n);
    for (size_t i = 0; i < n; ++i) {
        GroupRequest &g = reqs[i];
        g.use = RegistrationUse(); // deregmem waits for no finished request
        if (!g.error)
            continue;
        try {
            std::rethrow_exception(g.error);
        } catch (const std::exception &e) {
            failed(g.write, g.file->fd(), g.n, g.off, e);
        } catch (...) {
        }
    }
}

void Device::failed(bool write, int fd, size_t n, uint64_t off, const std::exception &e) {
    stats_.error();
    if (config().trace)
        trace::write(request_name(write, id_, fd, n, off) + ": failed: " + e.what());
}

void Device::info(phxfs_device_info &out) const {
    out.kind = kind_;
    out.kmod_index = kmod_index_;
    std::lock_guard lock(m_);
    // While open, what the session found (the node may have failed to open).
    const std::string &why = session_ ? session_->why_not_direct : why_not_direct_;
    out.direct = kmod_index_ >= 0 && why.empty() ? 1 : 0;
    copy_str(out.name, sizeof out.name, name_);
    copy_str(out.pci_bus_id, sizeof out.pci_bus_id, pci_bus_id_);
    copy_str(out.why_not_direct, sizeof out.why_not_direct, why);
    out.page_type = kmod_index_ < 0                   ? PHXFS_PAGES_NONE
                    : node_flags_ & PHXFS_INFO_P2PDMA ? PHXFS_PAGES_P2PDMA
                                                      : PHXFS_PAGES_GENERIC;
    out.numa_node = numa_node_;
}

void Device::config_changed(size_t staging_bytes) {
    std::shared_ptr<Session> s;
    {
        std::lock_guard lock(m_);
        s = session_;
    }
    if (s)
        s->compat->trim(staging_bytes);
}

void Device::stats(phxfs_stats &out) const {
    std::lock_guard lock(m_);
    stats_.snapshot(out, regs_.size());
}

} // namespace phxfs::core
