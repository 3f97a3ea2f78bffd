// run.hpp - one timed run of phxfs-bench, whatever the workload: the
// threads' start and deadline, the first failure, CPU time, the library's
// counters, and what each thread measured.
#pragma once

#include "options.hpp"

#include <phxfs/phxfs.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <latch>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace phxbench {

using Clock = std::chrono::steady_clock;

struct ThreadResult {
    std::vector<uint64_t> latency_ns; // one per request
    uint64_t bytes = 0;
    uint64_t io_ns = 0;                                 // time spent inside the I/O calls
    std::vector<std::pair<uint64_t, uint64_t>> written; // (offset, length), writes with --verify
    uint64_t blocks = 0;                                // kvcache: KV blocks moved
};

struct RunResult {
    uint64_t io_size = 0;
    uint64_t file_size = 0;
    uint64_t planned_bytes = 0; // 0 for --duration runs
    double wall_s = 0;
    double user_s = 0, sys_s = 0; // CPU time of the process during the run
    std::vector<ThreadResult> threads;
    bool have_stats = false;
    phxfs_stats stats{}; // counters of this run (after minus before)
    std::string error;   // set when the run failed
    // Verification: the first file offset that does not hold what it should.
    bool verified = false;
    std::optional<uint64_t> mismatch;
    std::string mismatch_detail;
    std::string note; // e.g. why buffers are unregistered
};

// What the threads of one run share.
struct RunControl {
    explicit RunControl(unsigned threads) : ready(threads) {}

    std::latch ready;    // each worker counts down once set up,
    std::latch start{1}; // then waits for this
    Clock::time_point deadline = Clock::time_point::max();
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> progress{0}; // bytes moved so far
    std::mutex m;                      // guards the fields below
    std::string error;
    std::optional<uint64_t> mismatch;
    std::string mismatch_detail;
    std::string note;

    // The first failure stops every thread.
    void fail(const std::string &e);
    // The lowest offset found wrong stops every thread.
    void mismatch_at(uint64_t off, const std::string &detail);
    void set_note(const std::string &n);
    bool past_deadline() const;
};

// Runs worker(t, res.threads[t]) on o.threads threads. Each worker counts
// down c.ready when set up and waits for c.start; the clock (and -T's
// deadline) starts when all are ready. Fills res's wall and CPU time, the
// library's counters (libphxfs paths) and the failure fields.
void run_threads(const Options &o, RunControl &c, RunResult &res,
                 const std::function<void(unsigned, ThreadResult &)> &worker);

// Sets the library's mode for -x compat and -x direct and restores the
// previous config.
class ModeGuard {
  public:
    explicit ModeGuard(PathType p);
    ~ModeGuard();
    ModeGuard(const ModeGuard &) = delete;
    ModeGuard &operator=(const ModeGuard &) = delete;

  private:
    phxfs_config saved_{};
    bool active_ = false;
};

} // namespace phxbench
