// phxfs_kmod_fuzz: a seeded fuzzer of phxfs.ko's user ABI
// (include/phxfs/phxfs_ioctl.h), run inside the VM. Worker processes, each
// with its own PRNG stream derived from --seed, mmap, MAP, UNMAP, touch, fork,
// close, O_DIRECT, vmsplice, io_uring and free GPU memory (the NVIDIA stand-in)
// in random order and with adversarial arguments. What counts as a failure:
// an errno outside the module's contract, an invalid request that succeeds, a
// worker dying of a signal other than a counted SIGBUS, a worker that hangs,
// and counters that do not return to zero once everything is gone.
//
//   phxfs_kmod_fuzz [--seed N] [--ops N] [--seconds S] [--procs P]
//                   [--pcibar DEV] [--nvidia DEV] [--bar-off OFF --bar-len LEN]
//                   [--disk PATH --disk-off OFF --disk-len LEN]
//
// Output: "FUZZ ..." lines on stdout; the last is "FUZZ result pass" or
// "FUZZ result fail <reason>", and the exit status is 0 only on pass.
#include <phxfs/phxfs_ioctl.h>

#include <fcntl.h>
#include <liburing.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr uint64_t kPage = 4096, kGpuPage = 64 << 10;
constexpr uint64_t kMiB = 1ull << 20, kTiB = 1ull << 40;
constexpr uint64_t kStubVaBase = 0x7e0000000000ull; // nvstub's first GPU VA
constexpr uint64_t kScratch = 64 * kMiB;            // PROT_NONE: never a phxfs VMA
constexpr int kMaxProcs = 64, kMaxErrno = 134, kMaxAllocs = 8;
constexpr int kMaxVmas = 24, kMaxMaps = 64, kMaxPipes = 6, kMaxRings = 2, kMaxJobs = 2;
const std::string kStub = "/sys/kernel/debug/nvstub/";

// Operation kinds and how often a worker picks each (0: counted, not picked).
// clang-format off
#define FUZZ_OPS(X)                                                                 \
    X(open, 0) X(mmap, 8) X(mmap_bad, 2) X(munmap, 3) X(munmap_partial, 2)          \
    X(mremap, 2) X(mprotect, 2) X(madvise, 2) X(map, 20) X(map_bad, 8) X(unmap, 9)  \
    X(unmap_bad, 3) X(touch, 10) X(fork, 2) X(close_fd, 1) X(dio, 4) X(dio_kill, 1) \
    X(ioctl_junk, 4) X(info, 1) X(vmsplice, 3) X(pipe_close, 2) X(uring, 2)         \
    X(uring_io, 0) X(uring_close, 1) X(nv_alloc, 3) X(nv_free, 2) X(nv_fail, 1)
// clang-format on
enum Op {
#define X(name, weight) op_##name,
    FUZZ_OPS(X)
#undef X
        kNumOps
};
constexpr const char *kOpName[] = {
#define X(name, weight) #name,
    FUZZ_OPS(X)
#undef X
};
constexpr int kOpWeight[] = {
#define X(name, weight) weight,
    FUZZ_OPS(X)
#undef X
};

using Errs = std::vector<int>;
const Errs kMmapErrs{EINVAL, ENOMEM, ENODEV};
const Errs kMapErrs{EINVAL, EBUSY, ENOSPC, EFAULT, EOPNOTSUPP, ENOMEM, EINTR};
const Errs kUnmapErrs{EINVAL, ENOENT};
const Errs kBadPtrErrs{EFAULT, EINVAL};
const Errs kIoErrs{EFAULT, EINVAL, ENOMEM}; // EFAULT: the pages went away under the I/O

struct Options {
    uint64_t seed = 0, ops = 10000, seconds = 0, procs = 4;
    std::string node[2] = {"/dev/phxfs0", "/dev/phxfs1"}; // [0] pcibar, [1] nvidia
    uint64_t bar_off = 256 * kMiB, bar_len = 256 * kMiB;
    std::string disk;
    uint64_t disk_off = 896 * kMiB, disk_len = 64 * kMiB;
};

// What all processes count into: a MAP_SHARED anonymous area made before fork.
struct OpCount {
    std::atomic<uint64_t> ok, fail, err[kMaxErrno];
};
struct Shared {
    OpCount op[kNumOps];
    std::atomic<uint64_t> sigbus, violations;
    std::atomic<int> reason_taken;
    char reason[240];
    std::atomic<int64_t> beat[kMaxProcs];             // last progress, ms (CLOCK_MONOTONIC)
    std::atomic<uint64_t> gpu[kMaxProcs][kMaxAllocs]; // live allocations, freed by the parent
};
Shared *g_shared;
int g_worker = -1; // -1: the parent

int64_t now_ms() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// One write(2) per line: lines of several processes never interleave, and
// nothing sits in a stdio buffer that fork would duplicate.
__attribute__((format(printf, 1, 2))) void say(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = std::min<int>(std::vsnprintf(buf, sizeof buf - 1, fmt, ap), sizeof buf - 2);
    va_end(ap);
    buf[n++] = '\n';
    (void)!::write(1, buf, n);
}

const char *ename(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

__attribute__((format(printf, 1, 2))) void violation(const char *fmt, ...) {
    char msg[sizeof g_shared->reason];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_shared->violations++ < 100)
        say("FUZZ violation w%d pid %d: %s", g_worker, ::getpid(), msg);
    int none = 0;
    if (g_shared->reason_taken.compare_exchange_strong(none, 1))
        std::snprintf(g_shared->reason, sizeof g_shared->reason, "w%d %.200s", g_worker, msg);
}

// Counts one outcome (err: 0 or an errno); an errno outside allowed breaks
// the contract. Returns whether the operation succeeded.
bool record(Op op, int err, const Errs &allowed, const char *what = "") {
    OpCount &c = g_shared->op[op];
    if (!err) {
        ++c.ok;
        return true;
    }
    ++c.fail;
    ++c.err[err > 0 && err < kMaxErrno ? err : 0];
    if (std::find(allowed.begin(), allowed.end(), err) == allowed.end())
        violation("%s %s: %s", kOpName[op], what, ename(err));
    return false;
}

// A request the contract refuses: success breaks it too.
void must_fail(Op op, int err, const Errs &allowed, const char *what) {
    if (!err)
        violation("%s %s: succeeded", kOpName[op], what);
    record(op, err, allowed, what);
}

// splitmix64: the same stream for a seed on every build.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }
    uint64_t between(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }
    bool pct(unsigned p) { return below(100) < p; }
};

int sys_err(long ret) {
    return ret < 0 ? errno : 0;
}

int do_ioctl(int fd, unsigned long cmd, const void *arg) {
    errno = 0;
    return sys_err(::ioctl(fd, cmd, arg));
}

phxfs_ioctl_map map_req(uint64_t dev_addr, uint64_t len, const void *va) {
    phxfs_ioctl_map r{};
    r.size = sizeof r;
    r.dev_addr = dev_addr;
    r.len = len;
    r.vaddr = reinterpret_cast<uint64_t>(va);
    return r;
}

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

// A file descriptor closed at the end of its scope.
struct UniqueFd {
    int fd;
    explicit UniqueFd(int f) : fd(f) {}
    UniqueFd(const UniqueFd &) = delete;
    UniqueFd &operator=(const UniqueFd &) = delete;
    ~UniqueFd() {
        if (fd >= 0)
            ::close(fd);
    }
};

// --- the NVIDIA stand-in's debugfs files (tests/vm/nvstub).
int stub_write(const char *file, uint64_t v) {
    const UniqueFd f(::open((kStub + file).c_str(), O_WRONLY | O_CLOEXEC));
    if (f.fd < 0)
        return errno;
    const std::string s = std::to_string(v);
    return sys_err(::write(f.fd, s.data(), s.size()));
}

// cudaMalloc: "alloc" reports the last allocation of anyone, so the write and
// the read back happen under an exclusive flock of the file.
int stub_alloc(uint64_t bytes, uint64_t &va) {
    const UniqueFd f(::open((kStub + "alloc").c_str(), O_RDWR | O_CLOEXEC));
    if (f.fd < 0)
        return errno;
    ::flock(f.fd, LOCK_EX);
    const std::string s = std::to_string(bytes);
    int err = sys_err(::write(f.fd, s.data(), s.size()));
    char buf[64] = {};
    if (!err && ::lseek(f.fd, 0, SEEK_SET) == 0 && ::read(f.fd, buf, sizeof buf - 1) > 0)
        va = std::strtoull(buf, nullptr, 16);
    else if (!err)
        err = EIO;
    return err;
}

bool exists(const std::string &path) {
    return ::access(path.c_str(), F_OK) == 0;
}

int64_t read_counter(const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "r");
    long long v = -1;
    if (f) {
        if (std::fscanf(f, "%lld", &v) != 1)
            v = -1;
        std::fclose(f);
    }
    return v;
}

struct Device {
    bool present = false;
    uint64_t page = kPage;
    std::string name; // phxfsN
};

// --- one worker process's view of what it made.
struct File {
    int fd;
    int dev;
    uint64_t id;
};
struct Vma {
    uint64_t id;
    uint8_t *va;
    uint64_t len;
    int dev;
    uint64_t file_id; // the open file it was made on (may be closed since)
    int prot = PROT_READ | PROT_WRITE;
    bool dofork = false;    // MADV_DOFORK: children get a copy
    bool shared = false;    // a child had a copy: its maps may have changed under us
    std::atomic<int> io{0}; // I/O threads on it: not to be munmapped
};
struct Mapping {
    uint64_t vma_id;
    uint8_t *va;
    uint64_t dev_addr, len;
    bool revoked = false; // its GPU memory was freed
};
struct GpuAlloc {
    uint64_t va, len;
    int slot;
};
struct IoJob {
    std::thread t;
    std::atomic<bool> done{false};
};
struct Pipe {
    int r, w;
};

class Worker {
  public:
    Worker(const Options &o, const Device *devs, int index)
        : o_(o), devs_(devs), index_(index), rng_{o.seed ^ (0xa0761d6478bd642full * (index + 1))} {
        const uint64_t slice = (o.bar_len / o.procs) & ~(kPage - 1);
        slice_len_ = slice ? slice : o.bar_len;
        slice_off_ = o.bar_off + (slice ? index * slice : 0);
    }
    [[noreturn]] void run();

  private:
    using Fn = void (Worker::*)();
    // Operations (do_<kind>), in FUZZ_OPS order.
    void do_open() {}
    void do_mmap();
    void do_mmap_bad();
    void do_munmap();
    void do_munmap_partial();
    void do_mremap();
    void do_mprotect();
    void do_madvise();
    void do_map();
    void do_map_bad();
    void do_unmap();
    void do_unmap_one(const Mapping &m);
    void release_held();
    void do_unmap_bad();
    void do_touch();
    void do_fork();
    void do_close_fd();
    void do_dio();
    void do_dio_kill();
    void do_ioctl_junk();
    void do_info();
    void do_vmsplice();
    void do_pipe_close();
    void do_uring();
    void do_uring_io() {}
    void do_uring_close();
    void do_nv_alloc();
    void do_nv_free();
    void do_nv_fail();

    Op pick_op();
    void beat() { g_shared->beat[index_] = now_ms(); }
    [[noreturn]] void finish();
    void free_all_gpu();
    [[noreturn]] void child_main();
    void reap(pid_t pid, bool killed, const char *what);
    void reap_jobs(bool all);
    void io_loop(uint8_t *va, uint64_t len, int n, Rng rng, bool forever);

    int random_dev();
    File *file_for(int dev);
    int fd_of(uint64_t file_id) const;
    Vma *vma_of(uint64_t id);
    Vma *pick_vma(const std::function<bool(const Vma &)> &ok);
    Mapping *pick_map(const std::function<bool(const Mapping &)> &ok);
    bool strict(const Mapping &m) { return !m.revoked && !vma_of(m.vma_id)->shared; }
    bool tracked(uint8_t *va, uint64_t dev_addr, uint64_t len) const;
    bool dev_range(int dev, uint64_t max, uint64_t &addr, uint64_t &len);
    uint8_t *place(const Vma &v, uint64_t len);
    bool io_range(uint64_t max, uint8_t *&va, uint64_t &len, Vma **vma = nullptr);
    void forget_vma(uint64_t id);
    void restore_scratch();

    const Options &o_;
    const Device *devs_;
    int index_;
    Rng rng_;
    uint64_t slice_off_, slice_len_, next_id_ = 1;
    bool child_ = false, broken_ = false, huge_ = false;
    int disk_fd_ = -1;
    uint8_t *scratch_ = nullptr;
    std::vector<uint8_t> junk_ = std::vector<uint8_t>(2 * kPage);
    std::vector<File> files_;
    std::vector<std::unique_ptr<Vma>> vmas_;
    std::vector<Mapping> maps_, ghosts_; // ghosts: UNMAPped, for UNMAP-twice
    std::vector<GpuAlloc> allocs_;
    std::vector<uint64_t> freed_; // GPU VAs freed: never handed out again
    std::vector<std::unique_ptr<IoJob>> jobs_;
    std::vector<Pipe> pipes_;
    std::vector<std::unique_ptr<io_uring>> rings_;
};

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

// --- other processes: fork, and killing one during I/O.
void Worker::reap(pid_t pid, bool killed, const char *what) {
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
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
    record(op_vmsplice, sys_err(::vmsplice(p.w, &iov, 1, SPLICE_F_NONBLOCK)),
           {EFAULT, EAGAIN, EINVAL, ENOMEM});
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
    // 6.1 refuses long-term pins of ZONE_DEVICE pages (EOPNOTSUPP).
    if (!record(op_uring, -io_uring_register_buffers(ring.get(), &iov, 1),
                {EFAULT, EOPNOTSUPP, ENOMEM}, "register_buffers")) {
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

// --- the parent.
[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: phxfs_kmod_fuzz [--seed N] [--ops N] [--seconds S] [--procs P]\n"
                         "         [--pcibar DEV] [--nvidia DEV] [--bar-off OFF --bar-len LEN]\n"
                         "         [--disk PATH --disk-off OFF --disk-len LEN]\n"
                         "  numbers take 0x and k/m/g/t suffixes\n");
    std::exit(2);
}

uint64_t parse_num(const char *s) {
    char *end = nullptr;
    uint64_t v = std::strtoull(s, &end, 0);
    static const std::string kUnits = "kmgt";
    if (const size_t u = *end ? kUnits.find(static_cast<char>(std::tolower(*end))) : kUnits.npos;
        u != kUnits.npos)
        v <<= 10 * (u + 1), ++end;
    if (end == s || *end)
        usage();
    return v;
}

Options parse(int argc, char **argv) {
    Options o;
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    o.seed = static_cast<uint64_t>(ts.tv_sec) * 1000003u ^ static_cast<uint64_t>(ts.tv_nsec);
    if (const char *d = std::getenv("PHXFS_GUEST_DISK"))
        o.disk = d;
    const std::map<std::string, uint64_t *> nums = {
        {"--seed", &o.seed},         {"--ops", &o.ops},          {"--seconds", &o.seconds},
        {"--procs", &o.procs},       {"--bar-off", &o.bar_off},  {"--bar-len", &o.bar_len},
        {"--disk-off", &o.disk_off}, {"--disk-len", &o.disk_len}};
    const std::map<std::string, std::string *> strs = {
        {"--pcibar", &o.node[0]}, {"--nvidia", &o.node[1]}, {"--disk", &o.disk}};
    if (argc % 2 == 0)
        usage();
    for (int i = 1; i < argc; i += 2) {
        if (nums.count(argv[i]))
            *nums.at(argv[i]) = parse_num(argv[i + 1]);
        else if (strs.count(argv[i]))
            *strs.at(argv[i]) = argv[i + 1];
        else
            usage();
    }
    if (o.procs < 1 || o.procs > kMaxProcs || o.bar_len < kPage || o.bar_off % kPage ||
        o.disk_off % kPage || o.disk_len < kMiB)
        usage();
    return o;
}

// INFO says which provider a node serves; a node that is absent is skipped.
Device probe(const std::string &node, uint32_t provider) {
    Device d;
    const UniqueFd f(::open(node.c_str(), O_RDWR | O_CLOEXEC));
    phxfs_ioctl_info info{};
    info.size = sizeof info;
    if (f.fd >= 0 && !do_ioctl(f.fd, PHXFS_IOCTL_INFO, &info) && info.provider == provider) {
        d.present = true;
        d.page = info.page_size;
        d.name = node.substr(node.rfind('/') + 1);
    } else {
        say("FUZZ note %s: not a %s device, skipped", node.c_str(),
            provider == PHXFS_PROVIDER_PCIBAR ? "pcibar" : "nvidia");
    }
    return d;
}

// Where a hung worker's threads wait in the kernel, before it is killed.
void dump_stacks(pid_t pid) {
    std::error_code ec;
    for (const auto &t :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
        FILE *f = std::fopen((t.path() / "stack").c_str(), "r");
        if (!f)
            continue;
        char line[256];
        while (std::fgets(line, sizeof line, f))
            say("FUZZ stack %s %.*s", t.path().filename().c_str(),
                static_cast<int>(std::strcspn(line, "\n")), line);
        std::fclose(f);
    }
}

// Waits for the workers; one that makes no progress for 60 s (or, with
// --seconds S, is still there S + 60 s after the start) is killed and fails.
std::string watch(const Options &o, std::vector<pid_t> pids) {
    std::string fail;
    const int64_t start = now_ms(), limit = (static_cast<int64_t>(o.seconds) + 60) * 1000;
    std::vector<int64_t> killed_at(pids.size(), 0);
    for (size_t alive = pids.size(); alive;) {
        int st = 0;
        const pid_t pid = ::waitpid(-1, &st, WNOHANG);
        const auto it = std::find(pids.begin(), pids.end(), pid);
        if (pid > 0 && it != pids.end()) {
            const size_t w = static_cast<size_t>(it - pids.begin());
            if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) && !killed_at[w] && fail.empty())
                fail = "worker " + std::to_string(w) +
                       (WIFSIGNALED(st) ? " killed by signal " + std::to_string(WTERMSIG(st))
                                        : " exited with " + std::to_string(WEXITSTATUS(st)));
            *it = -1;
            --alive;
            continue;
        }
        ::usleep(100000);
        const int64_t now = now_ms();
        for (size_t w = 0; w < pids.size(); ++w) {
            if (pids[w] < 0)
                continue;
            const bool hung = o.seconds ? now - start > limit : now - g_shared->beat[w] > limit;
            if (hung && !killed_at[w]) {
                say("FUZZ worker %zu pid %d hung: killed", w, pids[w]);
                dump_stacks(pids[w]);
                ::kill(pids[w], SIGKILL);
                killed_at[w] = now;
                if (fail.empty())
                    fail = "worker " + std::to_string(w) + " hung";
            } else if (killed_at[w] && now - killed_at[w] > 30000) {
                say("FUZZ worker %zu pid %d does not die", w, pids[w]);
                pids[w] = -1;
                --alive;
            }
        }
    }
    return fail;
}

void report_ops() {
    for (int i = 0; i < kNumOps; ++i) {
        const OpCount &c = g_shared->op[i];
        std::string errs;
        for (int e = 0; e < kMaxErrno; ++e)
            if (const uint64_t n = c.err[e])
                errs += (errs.empty() ? "" : ",") + std::string(e ? ename(e) : "other") + ":" +
                        std::to_string(n);
        say("FUZZ op %s ok %llu fail %llu errnos %s", kOpName[i],
            static_cast<unsigned long long>(c.ok.load()),
            static_cast<unsigned long long>(c.fail.load()), errs.empty() ? "-" : errs.c_str());
    }
    say("FUZZ sigbus %llu", static_cast<unsigned long long>(g_shared->sigbus.load()));
}

// Everything is gone: pins drain once their last page reference goes.
std::string check_counters(const Device &d) {
    const std::string dir = "/sys/class/phxfs/" + d.name + "/";
    int64_t mapped = -1, draining = -1;
    for (const int64_t end = now_ms() + 30000;;) {
        mapped = read_counter(dir + "mapped_bytes");
        draining = read_counter(dir + "draining");
        if ((mapped == 0 && draining <= 0) || now_ms() > end)
            break;
        ::usleep(100000);
    }
    say("FUZZ counters %s mapped_bytes %lld draining %s", d.name.c_str(),
        static_cast<long long>(mapped), draining < 0 ? "absent" : std::to_string(draining).c_str());
    if (mapped != 0 || draining > 0)
        return "counters of " + d.name + " did not return to zero";
    return "";
}

} // namespace

int main(int argc, char **argv) {
    const Options o = parse(argc, argv);
    say("FUZZ seed %llu procs %d ops %llu", static_cast<unsigned long long>(o.seed),
        static_cast<int>(o.procs), static_cast<unsigned long long>(o.ops));
    const Device devs[2] = {probe(o.node[0], PHXFS_PROVIDER_PCIBAR),
                            probe(o.node[1], PHXFS_PROVIDER_NVIDIA)};
    if (!devs[0].present && !devs[1].present) {
        say("FUZZ result fail no phxfs device");
        return 1;
    }
    if (o.disk.empty())
        say("FUZZ note no --disk or PHXFS_GUEST_DISK: no O_DIRECT I/O");
    void *area =
        ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) {
        say("FUZZ result fail mmap of the counter area: %s", ename(errno));
        return 1;
    }
    g_shared = new (area) Shared();

    std::vector<pid_t> pids;
    for (int w = 0; w < static_cast<int>(o.procs); ++w) {
        g_shared->beat[w] = now_ms();
        const pid_t pid = ::fork();
        if (pid == 0) {
            g_worker = w;
            Worker(o, devs, w).run();
        }
        if (pid < 0) {
            say("FUZZ result fail fork: %s", ename(errno));
            return 1;
        }
        pids.push_back(pid);
    }
    std::string fail = watch(o, pids);

    // GPU memory of workers that exited without freeing it, then the knob off.
    for (int w = 0; w < static_cast<int>(o.procs); ++w)
        for (auto &va : g_shared->gpu[w])
            if (va)
                stub_write("free", va);
    if (exists(kStub + "fail"))
        stub_write("fail", 0);

    report_ops();
    for (const Device &d : devs)
        if (d.present)
            if (std::string f = check_counters(d); !f.empty() && fail.empty())
                fail = f;
    if (fail.empty() && g_shared->violations)
        fail =
            std::to_string(g_shared->violations.load()) + " violations, first: " + g_shared->reason;
    if (!fail.empty()) {
        say("FUZZ result fail %s", fail.c_str());
        return 1;
    }
    say("FUZZ result pass");
    return 0;
}
