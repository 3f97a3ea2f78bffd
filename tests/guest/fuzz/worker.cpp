// A worker's life: signals and touch, choosing devices, VMAs, MAPs and
// ranges, the run loop and how a worker ends. Its operations (do_*) are in
// ops_mem.cpp and ops_io.cpp.
#include "fuzz.hpp"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

namespace phxfuzz {
namespace {

// --- signals: a SIGBUS on a page whose MAP is gone is expected and counted.
// volatile: set and cleared around plain loads and stores, which the compiler
// would otherwise let it move across (or drop).
thread_local sigjmp_buf *volatile t_jmp;

void on_sigbus(int, siginfo_t *, void *) {
    if (t_jmp) {
        ++g_shared->sigbus;
        siglongjmp(*t_jmp, 1);
    }
    say("FUZZ fatal w%d pid %d: SIGBUS outside a touch", g_worker, ::getpid());
    ::signal(SIGBUS, SIG_DFL);
    ::raise(SIGBUS);
}

void on_fatal(int sig, siginfo_t *si, void *) {
    say("FUZZ fatal w%d pid %d: signal %d at %p", g_worker, ::getpid(), sig, si->si_addr);
    ::raise(sig); // SA_RESETHAND: the default action now, seen by the parent
}

} // namespace

void install_signals() {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    ::sigaction(SIGBUS, &sa, nullptr);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    for (int sig : {SIGSEGV, SIGILL, SIGFPE, SIGABRT})
        ::sigaction(sig, &sa, nullptr);
    ::signal(SIGPIPE, SIG_IGN); // vmsplice into a pipe whose reader went: EPIPE
}

// Reads or writes n bytes at stride; returns false when a SIGBUS cut it short.
bool touch(uint8_t *p, uint64_t n, uint64_t stride, bool write, uint8_t v) {
    sigjmp_buf jb;
    if (sigsetjmp(jb, 1)) {
        t_jmp = nullptr;
        return false;
    }
    t_jmp = &jb;
    for (uint64_t i = 0; i < n; ++i) {
        volatile uint8_t *q = p + i * stride;
        if (write)
            *q = v;
        else
            (void)*q;
    }
    t_jmp = nullptr;
    return true;
}

// --- choosing things.
int Worker::random_dev() {
    if (devs_[0].present && devs_[1].present)
        return static_cast<int>(rng_.below(2));
    return devs_[0].present ? 0 : 1;
}

File *Worker::file_for(int dev) {
    std::vector<File *> mine;
    for (File &f : files_)
        if (f.dev == dev)
            mine.push_back(&f);
    if (!mine.empty() && (mine.size() >= 3 || !rng_.pct(15)))
        return mine[rng_.below(mine.size())];
    const int fd = ::open(o_.node[dev].c_str(), O_RDWR | O_CLOEXEC);
    if (!record(op_open, sys_err(fd), {ENOMEM}, o_.node[dev].c_str()))
        return mine.empty() ? nullptr : mine[0];
    files_.push_back({fd, dev, next_id_++});
    return &files_.back();
}

int Worker::fd_of(uint64_t file_id) const {
    for (const File &f : files_)
        if (f.id == file_id)
            return f.fd;
    return -1;
}

Vma *Worker::vma_of(uint64_t id) {
    for (auto &v : vmas_)
        if (v->id == id)
            return v.get();
    return nullptr;
}

Vma *Worker::pick_vma(const std::function<bool(const Vma &)> &ok) {
    std::vector<Vma *> c;
    for (auto &v : vmas_)
        if (ok(*v))
            c.push_back(v.get());
    return c.empty() ? nullptr : c[rng_.below(c.size())];
}

Mapping *Worker::pick_map(const std::function<bool(const Mapping &)> &ok) {
    std::vector<Mapping *> c;
    for (Mapping &m : maps_)
        if (ok(m))
            c.push_back(&m);
    return c.empty() ? nullptr : c[rng_.below(c.size())];
}

bool Worker::tracked(uint8_t *va, uint64_t dev_addr, uint64_t len) const {
    return std::any_of(maps_.begin(), maps_.end(), [&](const Mapping &m) {
        return m.va == va && m.dev_addr == dev_addr && m.len == len;
    });
}

// A device range of at most max bytes: memory this worker may MAP (pcibar:
// mostly its own slice of the BAR range, else all of it; nvidia: its GPU
// allocations). False when there is none.
bool Worker::dev_range(int dev, uint64_t max, uint64_t &addr, uint64_t &len) {
    if (dev == 0) {
        const uint64_t r = rng_.below(100);
        uint64_t pages = r < 60   ? rng_.between(1, 16)
                         : r < 90 ? rng_.between(17, 256)
                                  : rng_.between(257, 4096);
        const bool own = rng_.pct(75);
        const uint64_t base = own ? slice_off_ : o_.bar_off, span = own ? slice_len_ : o_.bar_len;
        len = std::min({pages * kPage, max & ~(kPage - 1), span & ~(kPage - 1)});
        addr = base + rng_.below((span - len) / kPage + 1) * kPage;
        return len != 0;
    }
    if (allocs_.empty())
        return false;
    const GpuAlloc &a = allocs_[rng_.below(allocs_.size())];
    const uint64_t n = a.len / kGpuPage, first = rng_.below(n);
    len = std::min(rng_.between(1, n - first) * kGpuPage, max & ~(kGpuPage - 1));
    addr = a.va + first * kGpuPage;
    return len != 0;
}

// A page-aligned user address in v with room for len bytes.
uint8_t *Worker::place(const Vma &v, uint64_t len) {
    return v.va + rng_.below((v.len - len) / kPage + 1) * kPage;
}

// A range for I/O of at most max bytes: mostly inside a MAP, else anywhere in a VMA.
bool Worker::io_range(uint64_t max, uint8_t *&va, uint64_t &len, Vma **vma) {
    if (Mapping *m = rng_.pct(80) ? pick_map([](const Mapping &) { return true; }) : nullptr) {
        const uint64_t first = rng_.below(m->len / kPage);
        len = std::min(rng_.between(1, m->len / kPage - first) * kPage, max);
        va = m->va + first * kPage;
        if (vma)
            *vma = vma_of(m->vma_id);
        return true;
    }
    Vma *v = pick_vma([](const Vma &) { return true; });
    if (!v)
        return false;
    len = std::min(rng_.between(1, 64) * kPage, std::min(max, v->len));
    va = place(*v, len);
    if (vma)
        *vma = v;
    return true;
}

void Worker::forget_vma(uint64_t id) {
    std::erase_if(maps_, [&](const Mapping &m) { return m.vma_id == id; });
    std::erase_if(ghosts_, [&](const Mapping &m) { return m.vma_id == id; });
    std::erase_if(vmas_, [&](const auto &v) { return v->id == id; });
}

// mremap(MREMAP_FIXED) into the scratch area unmaps that part of it first.
void Worker::restore_scratch() {
    ::mmap(scratch_, kScratch, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
           -1, 0);
}

// --- the worker's life.
Op Worker::pick_op() {
    int total = 0;
    for (int w : kOpWeight)
        total += w;
    int r = static_cast<int>(rng_.below(total));
    for (int i = 0; i < kNumOps; ++i)
        if ((r -= kOpWeight[i]) < 0)
            return static_cast<Op>(i);
    return op_touch;
}

void Worker::run() {
    install_signals();
    if (!o_.disk.empty())
        disk_fd_ = ::open(o_.disk.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    scratch_ = static_cast<uint8_t *>(
        ::mmap(nullptr, kScratch, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    static const Fn kOps[] = {
#define X(name, weight) &Worker::do_##name,
        FUZZ_OPS(X)
#undef X
    };
    const uint64_t n = o_.ops / o_.procs + (static_cast<uint64_t>(index_) < o_.ops % o_.procs);
    const int64_t end = o_.seconds ? now_ms() + static_cast<int64_t>(o_.seconds) * 1000 : INT64_MAX;
    for (uint64_t i = 0; i < n && !broken_ && now_ms() < end; ++i) {
        (this->*kOps[pick_op()])();
        beat();
        reap_jobs(false);
    }
    finish();
}

// Half the workers just exit with everything live (threads in I/O, MAPs,
// pipes, rings); the others undo it all, in a random order of GPU frees.
void Worker::finish() {
    beat();
    if (broken_ || rng_.pct(50))
        _exit(0);
    reap_jobs(true);
    const bool free_first = rng_.pct(50); // cudaFree while still mapped
    if (free_first)
        free_all_gpu();
    if (rng_.pct(50)) {
        while (!pipes_.empty())
            do_pipe_close();
        while (!rings_.empty())
            do_uring_close();
    }
    while (pick_map([&](const Mapping &m) { return fd_of(vma_of(m.vma_id)->file_id) >= 0; }))
        do_unmap();
    for (auto &v : vmas_)
        record(op_munmap, sys_err(::munmap(v->va, v->len)), {});
    free_all_gpu();
    while (!files_.empty())
        do_close_fd();
    _exit(0);
}

void Worker::free_all_gpu() {
    for (const GpuAlloc &a : allocs_) {
        record(op_nv_free, stub_write("free", a.va), {});
        g_shared->gpu[index_][a.slot] = 0;
    }
    allocs_.clear();
}

} // namespace phxfuzz
