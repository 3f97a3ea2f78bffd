// run.cpp - one timed run of phxfs-bench, whatever the workload.
#include "run.hpp"

#include <phxfs/phxfs.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <thread>

namespace phxbench {

namespace {

double tv_s(const timeval &tv) {
    return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6;
}

// Prints "\r<bytes> <rate>" on stderr twice a second once the run has taken
// over 2 s, when stderr is a terminal.
class Progress {
  public:
    Progress(const RunControl &c, uint64_t planned) : c_(c), planned_(planned) {
        if (isatty(STDERR_FILENO))
            th_ = std::jthread([this](std::stop_token st) { loop(st); });
    }
    ~Progress() {
        if (th_.joinable()) {
            th_.request_stop();
            th_.join();
            if (shown_)
                std::fprintf(stderr, "\r\033[K");
        }
    }
    Progress(const Progress &) = delete;
    Progress &operator=(const Progress &) = delete;

  private:
    void loop(std::stop_token st) {
        const auto t0 = Clock::now();
        while (!st.stop_requested()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            const double el = std::chrono::duration<double>(Clock::now() - t0).count();
            if (el < 2 || ++ticks_ % 5 != 0)
                continue;
            const uint64_t b = c_.progress.load(std::memory_order_relaxed);
            std::string pct;
            if (planned_)
                pct = " (" + std::to_string(b * 100 / planned_) + "%)";
            std::fprintf(stderr, "\r\033[K[phxfs-bench] %s%s  %.2f GiB/s  %.0f s",
                         human_bytes(b).c_str(), pct.c_str(),
                         static_cast<double>(b) / el / (1 << 30), el);
            shown_ = true;
        }
    }
    const RunControl &c_;
    uint64_t planned_;
    unsigned ticks_ = 0;
    bool shown_ = false;
    std::jthread th_;
};

} // namespace

void RunControl::fail(const std::string &e) {
    std::lock_guard lock(m);
    if (error.empty())
        error = e;
    stop = true;
}

void RunControl::mismatch_at(uint64_t off, const std::string &detail) {
    std::lock_guard lock(m);
    if (!mismatch || off < *mismatch) {
        mismatch = off;
        mismatch_detail = detail;
    }
    stop = true;
}

void RunControl::set_note(const std::string &n) {
    std::lock_guard lock(m);
    note = n;
}

bool RunControl::past_deadline() const {
    return deadline != Clock::time_point::max() && Clock::now() >= deadline;
}

void run_threads(const Options &o, RunControl &c, RunResult &res,
                 const std::function<void(unsigned, ThreadResult &)> &worker) {
    res.threads.resize(o.threads);
    phxfs_stats before{}, after{};
    before.size = after.size = sizeof(phxfs_stats);
    bool stats_ok = false;
    {
        std::vector<std::jthread> workers;
        for (unsigned t = 0; t < o.threads; ++t)
            workers.emplace_back([&worker, t, &res] { worker(t, res.threads[t]); });
        c.ready.wait(); // what the workers did to get ready is not counted
        stats_ok = o.path != PathType::naive && o.path != PathType::cufile &&
                   phxfs_get_stats(o.device, &before) == 0;
        rusage ru0{}, ru1{};
        ::getrusage(RUSAGE_SELF, &ru0);
        const auto t0 = Clock::now();
        if (o.duration_s)
            c.deadline = t0 + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(*o.duration_s));
        {
            Progress progress(c, res.planned_bytes);
            c.start.count_down();
            for (auto &w : workers)
                w.join();
        }
        res.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
        ::getrusage(RUSAGE_SELF, &ru1);
        res.user_s = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
        res.sys_s = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);
    }
    if (stats_ok && phxfs_get_stats(o.device, &after) == 0) {
        res.have_stats = true;
        res.stats.size = sizeof res.stats;
        for (int p = 0; p < PHXFS_PATH_COUNT; ++p) {
            auto &d = res.stats.path[p];
            const auto &a = after.path[p], &b = before.path[p];
            d.read_bytes = a.read_bytes - b.read_bytes;
            d.read_calls = a.read_calls - b.read_calls;
            d.read_ns = a.read_ns - b.read_ns;
            d.write_bytes = a.write_bytes - b.write_bytes;
            d.write_calls = a.write_calls - b.write_calls;
            d.write_ns = a.write_ns - b.write_ns;
        }
        res.stats.errors = after.errors - before.errors;
        res.stats.fallbacks = after.fallbacks - before.fallbacks;
        res.stats.registrations = after.registrations;
    }
    std::lock_guard lock(c.m);
    res.error = c.error;
    res.note = c.note;
    res.mismatch = c.mismatch;
    res.mismatch_detail = c.mismatch_detail;
}

ModeGuard::ModeGuard(PathType p) {
    if (p != PathType::compat && p != PathType::direct)
        return;
    saved_ = phxfs::get_config();
    phxfs_config c = saved_;
    c.mode = p == PathType::compat ? PHXFS_MODE_COMPAT : PHXFS_MODE_DIRECT;
    phxfs::set_config(c);
    active_ = true;
}

ModeGuard::~ModeGuard() {
    if (active_)
        phxfs_set_config(&saved_);
}

} // namespace phxbench
