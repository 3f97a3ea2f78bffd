// The worker's operations around its address space: other processes (fork,
// and killing one during I/O), O_DIRECT, ioctls the module does not know and
// INFO, pipes and io_uring, closing files, GPU memory of the stand-in.
#include "fuzz.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <system_error>

namespace phxfuzz {

// --- other processes: fork, and killing one during I/O.
void Worker::reap(pid_t pid, bool killed, const char *what) {
    int st = 0;
    // Bounded: a child stuck in the module is a failure of its own, with its
    // stacks, before the parent takes this worker for hung.
    for (int64_t end = now_ms() + 45000; ::waitpid(pid, &st, WNOHANG) == 0;) {
        if (now_ms() > end) {
            violation("%s pid %d hung", what, pid);
            dump_stacks(pid);
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            return;
        }
        ::usleep(1000);
    }
    beat();
    if ((WIFEXITED(st) && WEXITSTATUS(st) == 0) ||
        (killed && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
        return;
    violation("%s pid %d ended with status %#x", what, pid, st);
}

void Worker::do_fork() {
    for (auto &v : vmas_)
        v->shared |= v->dofork;
    const uint64_t seed = rng_.next();
    const pid_t pid = ::fork();
    if (pid == 0) {
        rng_.s = seed;
        child_main();
    }
    if (!record(op_fork, sys_err(pid), {EAGAIN, ENOMEM}))
        return;
    const bool kill = rng_.pct(40);
    if (kill) {
        ::usleep(static_cast<useconds_t>(rng_.below(20000)));
        ::kill(pid, SIGKILL);
    }
    reap(pid, kill, "fork child");
}

// A child holds what MADV_DOFORK let it copy, and our open files: it touches,
// maps and unmaps there and in VMAs of its own, then exits (or is killed).
void Worker::child_main() {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    child_ = true;
    for (auto &j : jobs_)
        (void)j.release(); // threads of the parent: not ours to join
    jobs_.clear();
    std::vector<uint64_t> gone;
    for (auto &v : vmas_)
        if (!v->dofork)
            gone.push_back(v->id);
    for (uint64_t id : gone)
        forget_vma(id);
    static const Fn kChildOps[] = {&Worker::do_touch,   &Worker::do_map,     &Worker::do_map,
                                   &Worker::do_unmap,   &Worker::do_mmap,    &Worker::do_map_bad,
                                   &Worker::do_madvise, &Worker::do_vmsplice};
    for (uint64_t i = 0, n = rng_.between(1, 12); i < n && !broken_; ++i)
        (this->*kChildOps[rng_.below(std::size(kChildOps))])();
    _exit(0);
}

// n O_DIRECT reads or writes between the disk region and [va, va + len).
void Worker::io_loop(uint8_t *va, uint64_t len, int n, Rng rng, bool forever) {
    for (int i = 0; forever || i < n; ++i) {
        const uint64_t first = rng.below(len / kPage);
        const uint64_t l = std::min(rng.between(1, 256), len / kPage - first) * kPage;
        const off_t off =
            static_cast<off_t>(o_.disk_off + rng.below((o_.disk_len - l) / kPage + 1) * kPage);
        const ssize_t r = rng.pct(50) ? ::pread(disk_fd_, va + first * kPage, l, off)
                                      : ::pwrite(disk_fd_, va + first * kPage, l, off);
        record(op_dio, sys_err(r), kIoErrs);
    }
}

void Worker::reap_jobs(bool all) {
    std::erase_if(jobs_, [&](auto &j) {
        if (!all && !j->done)
            return false;
        j->t.join();
        return true;
    });
}

// I/O in a thread of its own, while this thread goes on (and may UNMAP it).
void Worker::do_dio() {
    reap_jobs(false);
    uint8_t *va = nullptr;
    uint64_t len = 0;
    Vma *v = nullptr;
    if (disk_fd_ < 0 || jobs_.size() >= kMaxJobs || !io_range(kMiB, va, len, &v))
        return;
    auto job = std::make_unique<IoJob>();
    const int n = static_cast<int>(rng_.between(1, 8));
    const Rng rng{rng_.next()};
    ++v->io;
    IoJob *j = job.get();
    try {
        job->t = std::thread([=, this] {
            io_loop(va, len, n, rng, false);
            --v->io;
            j->done = true;
        });
    } catch (const std::system_error &) {
        --v->io;
        return;
    }
    jobs_.push_back(std::move(job));
}

// A child does I/O on device memory of its own from three threads and is
// killed with SIGKILL in the middle of it.
void Worker::do_dio_kill() {
    if (disk_fd_ < 0)
        return;
    const int dev = random_dev();
    uint64_t addr = 0, len = 0;
    if (!dev_range(dev, 16 * kMiB, addr, len))
        return;
    const uint64_t seed = rng_.next();
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        Rng rng{seed};
        const int fd = ::open(o_.node[dev].c_str(), O_RDWR | O_CLOEXEC);
        void *va = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (fd < 0 || va == MAP_FAILED)
            _exit(0);
        auto r = map_req(addr, len, va);
        if (!record(op_map, do_ioctl(fd, PHXFS_IOCTL_MAP, &r), kMapErrs, "in dio_kill child"))
            _exit(0);
        auto *p = static_cast<uint8_t *>(va);
        const Rng r1{rng.next()}, r2{rng.next()};
        try {
            std::thread([=, this] { io_loop(p, len, 0, r1, true); }).detach();
            std::thread([=, this] { io_loop(p, len, 0, r2, true); }).detach();
        } catch (const std::system_error &) {
        }
        io_loop(p, len, 0, rng, true); // until killed
    }
    if (!record(op_dio_kill, sys_err(pid), {EAGAIN, ENOMEM}))
        return;
    ::usleep(static_cast<useconds_t>(rng_.between(5000, 100000)));
    ::kill(pid, SIGKILL);
    reap(pid, true, "dio_kill child");
}

// --- ioctls the module does not know, and INFO.
void Worker::do_ioctl_junk() {
    File *f = file_for(random_dev());
    if (!f)
        return;
    // Type bytes the VFS serves itself for any file (FIOCLEX, FIFREEZE, ...).
    static const uint8_t kVfs[] = {0x00, 0x12, 0x15, 0x54, 0x58, 0x66, 0x94};
    uint8_t type = PHXFS_IOCTL_MAGIC;
    if (rng_.pct(40))
        do
            type = static_cast<uint8_t>(rng_.next());
        while (std::find(std::begin(kVfs), std::end(kVfs), type) != std::end(kVfs));
    const unsigned nr = rng_.pct(50) ? static_cast<unsigned>(rng_.between(0, 4))
                                     : static_cast<unsigned>(rng_.below(256));
    const unsigned size = static_cast<unsigned>(rng_.below(1 << 14));
    static const unsigned long kKnown[] = {PHXFS_IOCTL_INFO, PHXFS_IOCTL_MAP, PHXFS_IOCTL_UNMAP};
    const unsigned long cmd =
        rng_.pct(20) ? kKnown[rng_.below(3)] : _IOC(rng_.below(4), type, nr, size);
    for (size_t i = 0; i < junk_.size(); ++i)
        junk_[i] = static_cast<uint8_t>(rng_.next());
    if (rng_.pct(30)) // a size field that passes, the rest garbage
        *reinterpret_cast<uint32_t *>(junk_.data()) =
            cmd == PHXFS_IOCTL_INFO ? sizeof(phxfs_ioctl_info) : sizeof(phxfs_ioctl_map);
    static const uintptr_t kBad[] = {0, 16, 0xffff888000000000ull, 0x8000000000000000ull};
    const void *arg = rng_.pct(50)   ? static_cast<const void *>(junk_.data())
                      : rng_.pct(50) ? static_cast<const void *>(scratch_)
                                     : reinterpret_cast<const void *>(kBad[rng_.below(4)]);
    const int err = do_ioctl(f->fd, cmd, arg);
    char what[48];
    std::snprintf(what, sizeof what, "cmd %#lx", cmd);
    if (cmd == PHXFS_IOCTL_INFO)
        record(op_ioctl_junk, err, kBadPtrErrs, what);
    else if (cmd == PHXFS_IOCTL_MAP || cmd == PHXFS_IOCTL_UNMAP)
        record(op_ioctl_junk, err, {EINVAL, EFAULT, ENOENT, EBUSY, ENOSPC, EOPNOTSUPP, ENOMEM},
               what);
    else
        must_fail(op_ioctl_junk, err, {ENOTTY}, what);
}

void Worker::do_info() {
    File *f = file_for(random_dev());
    if (!f)
        return;
    phxfs_ioctl_info info{};
    info.size = sizeof info;
    const uint32_t provider = f->dev ? PHXFS_PROVIDER_NVIDIA : PHXFS_PROVIDER_PCIBAR;
    switch (rng_.below(4)) {
    case 0:
        info.size = static_cast<uint32_t>(rng_.pct(50) ? sizeof info - 4 : rng_.next());
        must_fail(op_info, do_ioctl(f->fd, PHXFS_IOCTL_INFO, &info), {EINVAL}, "size field");
        break;
    case 1:
        must_fail(op_info, do_ioctl(f->fd, PHXFS_IOCTL_INFO, nullptr), {EFAULT}, "NULL");
        break;
    default:
        if (record(op_info, do_ioctl(f->fd, PHXFS_IOCTL_INFO, &info), {}) &&
            (info.abi_version != PHXFS_ABI_VERSION || info.provider != provider ||
             info.page_size != devs_[f->dev].page))
            violation("info: abi %u provider %u page_size %llu", info.abi_version, info.provider,
                      static_cast<unsigned long long>(info.page_size));
    }
}

// --- references that outlive a MAP: pipes (vmsplice) and io_uring fixed buffers.
void Worker::do_vmsplice() {
    if (pipes_.empty() || (pipes_.size() < kMaxPipes && rng_.pct(30))) {
        int p[2];
        if (::pipe2(p, O_NONBLOCK | O_CLOEXEC))
            return;
        pipes_.push_back({p[0], p[1]});
    }
    uint8_t *va = nullptr;
    uint64_t len = 0;
    if (!io_range(16 * kPage, va, len))
        return;
    iovec iov{va, len};
    const Pipe &p = pipes_[rng_.below(pipes_.size())];
    // EREMOTEIO: P2PDMA pages (a kernel with CONFIG_PCI_P2PDMA) refuse it.
    record(op_vmsplice, sys_err(::vmsplice(p.w, &iov, 1, SPLICE_F_NONBLOCK)),
           {EFAULT, EAGAIN, EINVAL, ENOMEM, EREMOTEIO});
}

void Worker::do_pipe_close() {
    if (pipes_.empty())
        return;
    const size_t i = rng_.below(pipes_.size());
    if (rng_.pct(50)) { // read what it holds: the kernel copies from the device pages
        std::vector<uint8_t> buf(64 << 10);
        record(op_pipe_close, sys_err(::read(pipes_[i].r, buf.data(), buf.size())), {EAGAIN},
               "read");
    }
    ::close(pipes_[i].r);
    ::close(pipes_[i].w);
    pipes_.erase(pipes_.begin() + static_cast<long>(i));
    record(op_pipe_close, 0, {});
}

void Worker::do_uring() {
    uint8_t *va = nullptr;
    uint64_t len = 0;
    if (rings_.size() >= kMaxRings || !io_range(kMiB, va, len))
        return;
    auto ring = std::make_unique<io_uring>();
    if (const int err = -io_uring_queue_init(4, ring.get(), 0)) {
        record(op_uring, err, {ENOMEM}, "queue_init");
        return;
    }
    iovec iov{va, len};
    // 6.1 refuses long-term pins of ZONE_DEVICE pages (EOPNOTSUPP), every
    // kernel those of P2PDMA pages (EREMOTEIO).
    if (!record(op_uring, -io_uring_register_buffers(ring.get(), &iov, 1),
                {EFAULT, EOPNOTSUPP, ENOMEM, EREMOTEIO}, "register_buffers")) {
        io_uring_queue_exit(ring.get());
        return;
    }
    if (disk_fd_ >= 0 && rng_.pct(60)) {
        io_uring_sqe *sqe = io_uring_get_sqe(ring.get());
        const uint64_t off = o_.disk_off + rng_.below((o_.disk_len - len) / kPage + 1) * kPage;
        if (rng_.pct(50))
            io_uring_prep_read_fixed(sqe, disk_fd_, va, len, off, 0);
        else
            io_uring_prep_write_fixed(sqe, disk_fd_, va, len, off, 0);
        io_uring_submit(ring.get());
        __kernel_timespec ts{5, 0}; // bounded: an unfinished request dies with the ring
        io_uring_cqe *cqe = nullptr;
        int err = -io_uring_wait_cqe_timeout(ring.get(), &cqe, &ts);
        if (!err) {
            err = cqe->res < 0 ? -cqe->res : 0;
            io_uring_cqe_seen(ring.get(), cqe);
        }
        record(op_uring_io, err, {EFAULT, EINVAL, ENOMEM, ETIME});
    }
    rings_.push_back(std::move(ring));
}

void Worker::do_uring_close() {
    if (rings_.empty())
        return;
    const size_t i = rng_.below(rings_.size());
    io_uring_queue_exit(rings_[i].get());
    rings_.erase(rings_.begin() + static_cast<long>(i));
    record(op_uring_close, 0, {});
}

// --- files, and GPU memory of the NVIDIA stand-in.
void Worker::do_close_fd() {
    if (files_.empty())
        return;
    const size_t i = rng_.below(files_.size());
    record(op_close_fd, sys_err(::close(files_[i].fd)), {}); // its VMAs keep the file
    files_.erase(files_.begin() + static_cast<long>(i));
}

void Worker::do_nv_alloc() {
    // The parent frees what workers leave (g_shared->gpu); a fork child has no slot.
    auto *slots = g_shared->gpu[index_];
    const auto slot = std::find(slots, slots + kMaxAllocs, 0u) - slots;
    if (child_ || slot == kMaxAllocs || !devs_[1].present || !exists(kStub + "alloc"))
        return;
    uint64_t bytes = rng_.between(1, 64) * kGpuPage;
    if (rng_.pct(20))
        bytes -= rng_.between(1, kGpuPage - 1); // rounded up to GPU pages
    if (rng_.pct(5)) {
        uint64_t va = 0;
        must_fail(op_nv_alloc, stub_alloc(0, va), {EINVAL}, "zero bytes");
        return;
    }
    uint64_t va = 0;
    const int err = stub_alloc(bytes, va);
    if (err == ENOSPC)
        release_held();
    if (!record(op_nv_alloc, err, {ENOSPC, ENOMEM}))
        return;
    slots[slot] = va;
    allocs_.push_back({va, (bytes + kGpuPage - 1) & ~(kGpuPage - 1), static_cast<int>(slot)});
}

// cudaFree, often of memory that is mapped, pinned by I/O or in a pipe.
void Worker::do_nv_free() {
    if (!exists(kStub + "free"))
        return;
    if (allocs_.empty() || rng_.pct(15)) {
        const uint64_t va = freed_.empty() || rng_.pct(50) ? kStubVaBase - kGpuPage
                                                           : freed_[rng_.below(freed_.size())];
        must_fail(op_nv_free, stub_write("free", va), {EINVAL}, "not allocated");
        return;
    }
    const size_t i = rng_.below(allocs_.size());
    const GpuAlloc a = allocs_[i];
    record(op_nv_free, stub_write("free", a.va), {});
    for (Mapping &m : maps_)
        if (vma_of(m.vma_id)->dev == 1 && m.dev_addr >= a.va && m.dev_addr < a.va + a.len)
            m.revoked = true;
    g_shared->gpu[index_][a.slot] = 0;
    allocs_.erase(allocs_.begin() + static_cast<long>(i));
    freed_.push_back(a.va);
}

// Freed GPU memory goes back only when its last pin does: UNMAP (or munmap)
// what still maps freed memory, so that the workers do not run out of it.
void Worker::release_held() {
    while (Mapping *m = pick_map([&](const Mapping &m) {
               return m.revoked && fd_of(vma_of(m.vma_id)->file_id) >= 0;
           }))
        do_unmap_one(*m);
    std::vector<uint64_t> gone;
    for (const Mapping &m : maps_)
        if (Vma *v = vma_of(m.vma_id); m.revoked && v->io == 0)
            gone.push_back(v->id);
    for (uint64_t id : gone)
        if (Vma *v = vma_of(id)) {
            record(op_munmap, sys_err(::munmap(v->va, v->len)), {});
            forget_vma(id);
        }
}

// The stand-in fails the Nth next pin request (ENOMEM), for whoever asks.
void Worker::do_nv_fail() {
    if (exists(kStub + "fail"))
        record(op_nv_fail, stub_write("fail", rng_.between(0, 4)), {});
}

} // namespace phxfuzz
