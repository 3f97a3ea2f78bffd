// workload.hpp - the data file and one timed run of phxfs-bench.
#pragma once

#include "options.hpp"

#include <phxfs/phxfs.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace phxbench {

struct ThreadResult {
    std::vector<uint64_t> latency_ns; // one per request
    uint64_t bytes = 0;
    uint64_t io_ns = 0;                                 // time spent inside the I/O calls
    std::vector<std::pair<uint64_t, uint64_t>> written; // (offset, length), writes with --verify
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

// One timed run with request size io_size over the first file_size bytes.
RunResult run_workload(const Options &o, uint64_t io_size, uint64_t file_size);

} // namespace phxbench
