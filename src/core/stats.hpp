// Per-device counters, updated lock-free on the I/O path.
#pragma once

#include <phxfs/phxfs.h>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace phxfs::core {

struct PathCounters {
    std::atomic<uint64_t> read_bytes{0}, read_calls{0}, read_ns{0};
    std::atomic<uint64_t> write_bytes{0}, write_calls{0}, write_ns{0};
};

class Stats {
  public:
    void add(phxfs_path path, bool write, uint64_t bytes, uint64_t ns) {
        PathCounters &p = paths_[path];
        auto r = std::memory_order_relaxed;
        (write ? p.write_bytes : p.read_bytes).fetch_add(bytes, r);
        (write ? p.write_calls : p.read_calls).fetch_add(1, r);
        (write ? p.write_ns : p.read_ns).fetch_add(ns, r);
    }
    void error() { errors_.fetch_add(1, std::memory_order_relaxed); }
    void fallback() { fallbacks_.fetch_add(1, std::memory_order_relaxed); }
    // Staging memory held now; the device's lane pool keeps it.
    std::atomic<uint64_t> &staging_bytes() { return staging_bytes_; }
    void snapshot(phxfs_stats &out, uint64_t registrations) const;
    void reset();

  private:
    PathCounters paths_[PHXFS_PATH_COUNT];
    std::atomic<uint64_t> errors_{0}, fallbacks_{0}, staging_bytes_{0};
};

inline uint64_t now_ns() {
    using namespace std::chrono;
    return duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
}

} // namespace phxfs::core
