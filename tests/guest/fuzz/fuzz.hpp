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
//
// The files (tests/guest/fuzz/):
//   fuzz.hpp     what they share: limits, the operations and their weights,
//                Options, the counter area, the PRNG, small helpers, Worker
//   main.cpp     the parent: options, the counter area and how outcomes are
//                counted into it, the stand-in's debugfs files, spawning and
//                watching the workers, the report, the module's counters
//   worker.cpp   a worker's life: signals and touch, choosing devices, VMAs,
//                MAPs and ranges, the run loop and how a worker ends
//   ops_mem.cpp  operations on the address space: mmap, munmap, mremap,
//                mprotect, madvise, MAP, UNMAP, touch
//   ops_io.cpp   operations around it: fork, O_DIRECT, junk ioctls and INFO,
//                vmsplice, io_uring, close, GPU memory of the stand-in
//
// A seed replays: every PRNG draw is made in one fixed order.
#pragma once

#include "../map_request.hpp"

#include <phxfs/phxfs_ioctl.h>

#include <liburing.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace phxfuzz {

constexpr uint64_t kPage = 4096, kGpuPage = 64 << 10;
constexpr uint64_t kMiB = 1ull << 20, kTiB = 1ull << 40;
constexpr uint64_t kStubVaBase = 0x7e0000000000ull; // nvstub's first GPU VA
constexpr uint64_t kScratch = 64 * kMiB;            // PROT_NONE: never a phxfs VMA
constexpr int kMaxProcs = 64, kMaxErrno = 134, kMaxAllocs = 8;
constexpr int kMaxVmas = 24, kMaxMaps = 64, kMaxPipes = 6, kMaxRings = 2, kMaxJobs = 2;
inline const std::string kStub = "/sys/kernel/debug/nvstub/";

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
inline constexpr const char *kOpName[] = {
#define X(name, weight) #name,
    FUZZ_OPS(X)
#undef X
};
inline constexpr int kOpWeight[] = {
#define X(name, weight) weight,
    FUZZ_OPS(X)
#undef X
};

using Errs = std::vector<int>;
inline const Errs kMmapErrs{EINVAL, ENOMEM, ENODEV};
inline const Errs kMapErrs{EINVAL, EBUSY, ENOSPC, EFAULT, EOPNOTSUPP, ENOMEM, EINTR};
inline const Errs kUnmapErrs{EINVAL, ENOENT};
inline const Errs kBadPtrErrs{EFAULT, EINVAL};
inline const Errs kIoErrs{EFAULT, EINVAL, ENOMEM}; // EFAULT: the pages went away under the I/O

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

// The counter area (main.cpp), and which worker this process is.
extern Shared *g_shared;
extern int g_worker; // -1: the parent

inline int64_t now_ms() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// One write(2) per line: lines of several processes never interleave, and
// nothing sits in a stdio buffer that fork would duplicate.
__attribute__((format(printf, 1, 2))) void say(const char *fmt, ...);

inline const char *ename(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

// A breach of the contract: said (the first 100 times), counted, and the first
// kept as the result's reason.
__attribute__((format(printf, 1, 2))) void violation(const char *fmt, ...);

// Counts one outcome (err: 0 or an errno); an errno outside allowed breaks
// the contract. Returns whether the operation succeeded.
bool record(Op op, int err, const Errs &allowed, const char *what = "");

// A request the contract refuses: success breaks it too.
void must_fail(Op op, int err, const Errs &allowed, const char *what);

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

inline int sys_err(long ret) {
    return ret < 0 ? errno : 0;
}

inline int do_ioctl(int fd, unsigned long cmd, const void *arg) {
    errno = 0;
    return sys_err(::ioctl(fd, cmd, arg));
}

inline phxfs_ioctl_map map_req(uint64_t dev_addr, uint64_t len, const void *va) {
    return map_request(dev_addr, len, va);
}

// --- signals (worker.cpp): a SIGBUS on a page whose MAP is gone is expected
// and counted.
void install_signals();

// Reads or writes n bytes at stride; returns false when a SIGBUS cut it short.
bool touch(uint8_t *p, uint64_t n, uint64_t stride, bool write, uint8_t v);

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

// --- the NVIDIA stand-in's debugfs files (tests/vm/nvstub), in main.cpp.
int stub_write(const char *file, uint64_t v);

// cudaMalloc: "alloc" reports the last allocation of anyone, so the write and
// the read back happen under an exclusive flock of the file.
int stub_alloc(uint64_t bytes, uint64_t &va);

inline bool exists(const std::string &path) {
    return ::access(path.c_str(), F_OK) == 0;
}

// Where a hung process's threads wait in the kernel, before it is killed.
void dump_stacks(pid_t pid);

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

} // namespace phxfuzz
