// The worker's operations on its address space: mmap, munmap, mremap,
// mprotect, madvise, MAP, UNMAP and touching device memory.
#include "fuzz.hpp"

#include <sys/mman.h>

#include <algorithm>

namespace phxfuzz {

// --- mmap, munmap, mremap, mprotect, madvise.
void Worker::do_mmap() {
    if (vmas_.size() >= kMaxVmas)
        return do_munmap();
    const int dev = random_dev();
    File *f = file_for(dev);
    if (!f)
        return;
    const uint64_t r = rng_.below(100);
    const bool huge = r >= 97 && !huge_;
    const uint64_t len = huge     ? 64 * kTiB
                         : r < 40 ? rng_.between(1, 16) * kPage
                         : r < 75 ? rng_.between(17, 4096) * kPage
                                  : rng_.between(4097, 262144) * kPage; // up to 1 GiB
    void *va = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, 0);
    if (!record(op_mmap, va == MAP_FAILED ? errno : 0, kMmapErrs, huge ? "64 TiB" : ""))
        return;
    huge_ |= huge;
    auto v = std::make_unique<Vma>();
    v->id = next_id_++;
    v->va = static_cast<uint8_t *>(va);
    v->len = len;
    v->dev = dev;
    v->file_id = f->id;
    vmas_.push_back(std::move(v));
}

void Worker::do_mmap_bad() {
    File *f = file_for(random_dev());
    if (!f)
        return;
    int flags = MAP_SHARED;
    uint64_t len = rng_.between(1, 16) * kPage;
    off_t off = 0;
    const char *what = "";
    switch (rng_.below(5)) {
    case 0:
        flags = MAP_PRIVATE, what = "MAP_PRIVATE";
        break;
    case 1:
        off = static_cast<off_t>(rng_.between(1, 1 << 18) * kPage), what = "offset";
        break;
    case 2:
        off = static_cast<off_t>(rng_.between(1, kPage - 1)), what = "unaligned offset";
        break;
    case 3:
        len = 0, what = "zero length";
        break;
    default:
        len = (1ull << 63) + rng_.below(1ull << 40), what = "absurd length";
        break;
    }
    void *va = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, flags, f->fd, off);
    must_fail(op_mmap_bad, va == MAP_FAILED ? errno : 0, kMmapErrs, what);
    if (va != MAP_FAILED)
        ::munmap(va, len);
}

void Worker::do_munmap() {
    Vma *v = pick_vma([](const Vma &v) { return v.io == 0; });
    if (!v)
        return;
    record(op_munmap, sys_err(::munmap(v->va, v->len)), {});
    forget_vma(v->id);
}

// Cutting a phxfs VMA is refused (a MAP is addressed by its VMA's start).
void Worker::do_munmap_partial() {
    Vma *v = pick_vma([](const Vma &v) { return v.io == 0 && v.len >= 2 * kPage; });
    if (!v)
        return;
    const uint64_t pages = v->len / kPage;
    uint64_t first = rng_.below(pages), n = rng_.between(1, pages - first);
    if (first == 0 && n == pages)
        n = pages - 1; // the head, not all of it
    const int err = sys_err(::munmap(v->va + first * kPage, n * kPage));
    must_fail(op_munmap_partial, err, {EINVAL}, "");
    broken_ |= !err; // the bookkeeping no longer matches the address space
}

void Worker::do_mremap() {
    Vma *v = pick_vma([](const Vma &v) { return v.io == 0; });
    if (!v)
        return;
    void *r = MAP_FAILED;
    const char *what = "";
    switch (rng_.below(5)) {
    case 0:
        r = ::mremap(v->va, v->len, v->len + rng_.between(1, 16) * kPage, MREMAP_MAYMOVE);
        what = "grow";
        break;
    case 1:
        if (v->len < 2 * kPage)
            return;
        r = ::mremap(v->va, v->len, v->len - kPage * rng_.between(1, v->len / kPage - 1), 0);
        what = "shrink";
        break;
    case 2:
        if (v->len > kScratch)
            return;
        r = ::mremap(v->va, v->len, v->len, MREMAP_MAYMOVE | MREMAP_FIXED, scratch_);
        what = "move";
        break;
    case 3:
        if (v->len < 2 * kPage)
            return;
        r = ::mremap(v->va + kPage, kPage, kPage, MREMAP_MAYMOVE | MREMAP_FIXED, scratch_);
        what = "move a part";
        break;
    default:
        r = ::mremap(v->va, 0, v->len, MREMAP_MAYMOVE);
        what = "duplicate";
        break;
    }
    const int err = r == MAP_FAILED ? errno : 0;
    restore_scratch();
    // EFAULT: the kernel's own refusal to grow a VM_DONTEXPAND mapping.
    must_fail(op_mremap, err, {EINVAL, EFAULT}, what);
    broken_ |= !err;
}

void Worker::do_mprotect() {
    Vma *v = pick_vma([](const Vma &v) { return v.io == 0; });
    if (!v)
        return;
    static constexpr int kProts[] = {PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE};
    const int prot = kProts[rng_.below(3)];
    if (v->len < 2 * kPage || rng_.pct(60)) {
        if (record(op_mprotect, sys_err(::mprotect(v->va, v->len, prot)), {EINVAL}, "whole"))
            v->prot = prot;
        return;
    }
    if (prot == v->prot)
        return; // an unchanged protection splits nothing and succeeds
    const uint64_t first = rng_.between(1, v->len / kPage - 1);
    const int err = sys_err(::mprotect(v->va + first * kPage, kPage, prot));
    must_fail(op_mprotect, err, {EINVAL}, "part");
    broken_ |= !err;
}

void Worker::do_madvise() {
    Vma *v = pick_vma([](const Vma &) { return true; });
    if (!v)
        return;
    const uint64_t r = rng_.below(10);
    if (r < 5) { // gone from the page tables: touching it now is a SIGBUS
        uint8_t *va = nullptr;
        uint64_t len = 0;
        if (!io_range(v->len, va, len))
            return;
        record(op_madvise, sys_err(::madvise(va, len, MADV_DONTNEED)), {EINVAL}, "DONTNEED");
    } else if (r < 9) {
        const bool fork = r < 8;
        if (record(op_madvise,
                   sys_err(::madvise(v->va, v->len, fork ? MADV_DOFORK : MADV_DONTFORK)), {EINVAL},
                   "DOFORK"))
            v->dofork = fork;
    } else if (v->len >= 2 * kPage) {
        const int err = sys_err(::madvise(v->va, kPage, v->dofork ? MADV_DONTFORK : MADV_DOFORK));
        must_fail(op_madvise, err, {EINVAL}, "part DOFORK");
        broken_ |= !err;
    }
}

// --- MAP and UNMAP.
void Worker::do_map() {
    if (maps_.size() >= kMaxMaps)
        return do_unmap();
    const int dev = random_dev();
    Vma *v = pick_vma([&](const Vma &v) { return v.dev == dev && fd_of(v.file_id) >= 0; });
    if (!v)
        return do_mmap();
    uint64_t addr = 0, len = 0;
    if (!dev_range(dev, v->len, addr, len))
        return dev == 1 ? do_nv_alloc() : void();
    uint8_t *va = place(*v, len);
    auto r = map_req(addr, len, va);
    if (record(op_map, do_ioctl(fd_of(v->file_id), PHXFS_IOCTL_MAP, &r), kMapErrs))
        maps_.push_back({v->id, va, addr, len});
}

void Worker::do_map_bad() {
    const int dev = random_dev();
    Vma *v = pick_vma([&](const Vma &v) { return v.dev == dev && fd_of(v.file_id) >= 0; });
    if (!v)
        return do_mmap();
    const uint64_t page = devs_[dev].page;
    uint64_t addr = 0, len = 0;
    // Without memory to map, any refusal of the contract will do.
    const bool valid = dev_range(dev, v->len, addr, len);
    if (!valid)
        addr = kStubVaBase - kGpuPage, len = page;
    auto r = map_req(addr, len, place(*v, std::min(len, v->len & ~(kPage - 1))));
    Errs need = valid ? Errs{EINVAL} : kMapErrs;
    const char *what = "";
    const void *arg = &r;
    switch (rng_.below(14)) {
    case 0:
        r.size = static_cast<uint32_t>(rng_.next()) | 1, what = "size field";
        break;
    case 1:
        r.flags = static_cast<uint32_t>(rng_.between(1, ~0u)), what = "flags";
        break;
    case 2:
        r.len = 0, what = "zero length";
        break;
    case 3:
        r.dev_addr += rng_.between(1, page - 1), what = "unaligned device address";
        break;
    case 4:
        r.len += rng_.between(1, page - 1), what = "unaligned length";
        break;
    case 5:
        r.vaddr += rng_.between(1, kPage - 1), what = "unaligned user address";
        break;
    case 6:
        r.dev_addr = ~0ull - page + 1, r.len = 2 * page, what = "device range wraps";
        break;
    case 7:
        r.vaddr = ~0ull - kPage + 1 - rng_.below(16) * kPage, what = "user range wraps";
        break;
    case 8:
        r.vaddr = reinterpret_cast<uint64_t>(scratch_) + rng_.below(kScratch / 2 / kPage) * kPage;
        what = "not a phxfs VMA";
        break;
    case 9: {
        Vma *other =
            pick_vma([&](const Vma &o) { return o.file_id != v->file_id && o.len >= len; });
        if (!other)
            return;
        r.vaddr = reinterpret_cast<uint64_t>(place(*other, len));
        what = "VMA of another open file";
        break;
    }
    case 10:
        r.vaddr = reinterpret_cast<uint64_t>(v->va + v->len - kPage);
        // Up to huge; GPU ranges within what the stand-in can allocate a page table for.
        r.len = rng_.pct(70) ? 2 * page : rng_.between(1, dev ? 1 << 14 : 1ull << 30) * page;
        what = "past the VMA's end";
        break;
    case 11:
        if (dev == 0) { // beyond the BAR; never longer than the VMA (no huge page tables)
            r.dev_addr = rng_.pct(50) ? 512 * kMiB : rng_.next() & ~(kPage - 1);
            r.len = rng_.pct(10) && v->len >= kTiB ? kTiB : page;
            r.vaddr = reinterpret_cast<uint64_t>(place(*v, r.len));
        } else {
            r.dev_addr = freed_.empty() || rng_.pct(30)
                             ? kStubVaBase - kGpuPage * rng_.between(1, 64)
                             : freed_[rng_.below(freed_.size())];
        }
        need = kMapErrs; // EFAULT or EINVAL; ENOMEM where the stand-in fails a pin
        what = "device memory that is not there";
        break;
    case 12: { // over a MAP already in this VMA
        Mapping *m = pick_map([&](const Mapping &m) { return m.vma_id == v->id && strict(m); });
        if (!m || !dev_range(dev, m->len, addr, len))
            return;
        r = map_req(addr, len, m->va + rng_.below(m->len / kPage) / 2 * kPage);
        if (reinterpret_cast<uint8_t *>(r.vaddr) + len > v->va + v->len)
            return;
        need = kMapErrs;
        what = "overlap";
        break;
    }
    default: { // the argument itself is bad
        static const uintptr_t kBad[] = {0, 16, 0xffff888000000000ull, 0x8000000000000000ull};
        arg = rng_.pct(70) ? reinterpret_cast<void *>(kBad[rng_.below(4)]) : scratch_;
        need = kBadPtrErrs;
        what = "bad pointer";
        break;
    }
    }
    const int err = do_ioctl(fd_of(v->file_id), PHXFS_IOCTL_MAP, arg);
    must_fail(op_map_bad, err, need, what);
    if (!err && arg == &r) // tracked all the same, so that it is undone
        maps_.push_back({v->id, reinterpret_cast<uint8_t *>(r.vaddr), r.dev_addr, r.len});
}

void Worker::do_unmap() {
    Mapping *m = pick_map([&](const Mapping &m) { return fd_of(vma_of(m.vma_id)->file_id) >= 0; });
    if (!m)
        return do_map();
    do_unmap_one(*m);
}

void Worker::do_unmap_one(const Mapping &m) {
    auto r = map_req(m.dev_addr, m.len, m.va);
    const int err = do_ioctl(fd_of(vma_of(m.vma_id)->file_id), PHXFS_IOCTL_UNMAP, &r);
    // Our own MAP, in a VMA no child shared, must still be there.
    record(op_unmap, err, strict(m) ? Errs{} : kUnmapErrs, strict(m) ? "own MAP" : "");
    ghosts_.push_back(m);
    if (ghosts_.size() > 16)
        ghosts_.erase(ghosts_.begin());
    maps_.erase(maps_.begin() + (&m - maps_.data()));
}

void Worker::do_unmap_bad() {
    Mapping *m = pick_map([&](const Mapping &m) { return fd_of(vma_of(m.vma_id)->file_id) >= 0; });
    if (!m)
        return;
    Vma *v = vma_of(m->vma_id);
    int fd = fd_of(v->file_id);
    auto r = map_req(m->dev_addr, m->len, m->va);
    const void *arg = &r;
    Errs need = kUnmapErrs;
    const char *what = "";
    switch (rng_.below(7)) {
    case 0:
        r.len += devs_[v->dev].page, what = "longer";
        break;
    case 1:
        r.dev_addr += devs_[v->dev].page, what = "other device address";
        break;
    case 2:
        r.vaddr += kPage, what = "other user address";
        break;
    case 3:
        r.size = sizeof r + 8, what = "size field";
        break;
    case 4: {
        Mapping *g = ghosts_.empty() ? nullptr : &ghosts_[rng_.below(ghosts_.size())];
        if (!g || fd_of(vma_of(g->vma_id)->file_id) < 0)
            return;
        v = vma_of(g->vma_id);
        fd = fd_of(v->file_id);
        r = map_req(g->dev_addr, g->len, g->va);
        what = "twice";
        break;
    }
    case 5: { // the VMA is not of this file
        auto f = std::find_if(files_.begin(), files_.end(),
                              [&](const File &f) { return f.id != v->file_id; });
        if (f == files_.end())
            return;
        fd = f->fd;
        need = {EINVAL};
        what = "through another open file";
        break;
    }
    default:
        arg = rng_.pct(50) ? nullptr : scratch_;
        need = kBadPtrErrs;
        what = "bad pointer";
        break;
    }
    const int err = do_ioctl(fd, PHXFS_IOCTL_UNMAP, arg);
    const bool exact = fd == fd_of(v->file_id) && arg == &r &&
                       tracked(reinterpret_cast<uint8_t *>(r.vaddr), r.dev_addr, r.len);
    if (!v->shared && !exact)
        must_fail(op_unmap_bad, err, need, what);
    else
        record(op_unmap_bad, err, need, what);
    if (!err) // it did undo something: whatever we tracked there is gone
        std::erase_if(maps_, [&](const Mapping &x) {
            return x.va == reinterpret_cast<uint8_t *>(r.vaddr) && x.vma_id == v->id;
        });
}

// --- touching device memory.
void Worker::do_touch() {
    uint8_t *va = nullptr;
    uint64_t len = 0;
    Vma *v = nullptr;
    if (!io_range(64 * kPage, va, len, &v) || !(v->prot & PROT_READ))
        return;
    const bool write = (v->prot & PROT_WRITE) && rng_.pct(50);
    const uint64_t n = rng_.between(1, 8), stride = std::max<uint64_t>(1, len / n);
    const bool whole = touch(va + rng_.below(std::min(stride, kPage)), n, stride, write,
                             static_cast<uint8_t>(rng_.next()));
    ++(whole ? g_shared->op[op_touch].ok : g_shared->op[op_touch].fail); // fail: a SIGBUS
}

} // namespace phxfuzz
