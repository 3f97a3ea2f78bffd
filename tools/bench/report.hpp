// report.hpp - the results of a phxfs-bench run: a gdsio-like line and the
// path that moved the bytes, or one JSON object.
#pragma once

#include "options.hpp"
#include "workload.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace phxbench {

struct Summary {
    uint64_t bytes = 0, ops = 0;
    double io_s = 0; // the time throughput is computed over
    double gib_per_s = 0;
    double avg_us = 0, p50_us = 0, p99_us = 0, min_us = 0, max_us = 0;
    uint64_t blocks = 0; // kvcache: KV blocks moved
    double gb_per_s = 0, blocks_per_s = 0;
};

Summary summarize(const Options &o, const RunResult &r);

// "IoType: READ XferType: PHXFS(auto) Threads: 4 ..." and the path line.
std::string text_report(const Options &o, const RunResult &r, const Summary &s);
nlohmann::json json_report(const Options &o, const RunResult &r, const Summary &s);

// What XferType shows: PHXFS(auto), PHXFS(compat), PHXFS(direct), NAIVE.
std::string xfer_type(const Options &o);

} // namespace phxbench
