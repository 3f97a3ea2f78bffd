// report.cpp - the results of a phxfs-bench run.
#include "report.hpp"

#include "kvcache.hpp"

#include <algorithm>
#include <cstdio>

namespace phxbench {

namespace {

std::string fmt(const char *f, double v) {
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

// Which path moved the bytes, from the library's counters.
std::string path_line(const Options &o, const RunResult &r) {
    if (o.path == PathType::naive)
        return o.mem == MemType::device
                   ? std::string("Path: naive (pread/pwrite through a ") +
                         (o.bounce_pinned ? "pinned" : "pageable") +
                         " host buffer and a synchronous copy; libphxfs not used)"
                   : "Path: naive (pread/pwrite straight on the host buffer; libphxfs not used)";
    if (o.path == PathType::cufile && o.stream)
        return "Path: cuFile stream API (cuFileReadAsync/cuFileWriteAsync on a registered "
               "stream; libphxfs not used)";
    if (o.path == PathType::cufile)
        return o.batch || o.io == IoType::kvcache
                   ? "Path: cuFile batch API (cuFileBatchIOSubmit, batches of at most 128; "
                     "libphxfs not used)"
                   : "Path: cuFile (cuFileRead/cuFileWrite, buffers registered with "
                     "cuFileBufRegister; libphxfs not used)";
    if (o.stream) // core/stream_io; phxfs_get_stats counts it on the compat path
        return "Path: stream-ordered (pinned staging, a copy kernel on the caller's stream)";
    if (!r.have_stats)
        return "Path: unknown (phxfs_get_stats failed)";
    const bool w = writes(o);
    const auto &d = r.stats.path[PHXFS_PATH_DIRECT];
    const auto &c = r.stats.path[PHXFS_PATH_COMPAT];
    const uint64_t db = w ? d.write_bytes : d.read_bytes, cb = w ? c.write_bytes : c.read_bytes;
    const uint64_t dc = w ? d.write_calls : d.read_calls, cc = w ? c.write_calls : c.read_calls;
    std::string s = "Path: direct " + human_bytes(db) + " (" + std::to_string(dc) +
                    " calls), compat " + human_bytes(cb) + " (" + std::to_string(cc) +
                    " calls), fallbacks " + std::to_string(r.stats.fallbacks) + ", errors " +
                    std::to_string(r.stats.errors);
    if (db + cb)
        s += " -> " + std::string(db >= cb ? (cb ? "mostly direct" : "direct")
                                           : (db ? "mostly compat" : "compat"));
    return s;
}

} // namespace

std::string xfer_type(const Options &o) {
    switch (o.path) {
    case PathType::phxfs:
        return "PHXFS(auto)";
    case PathType::compat:
        return "PHXFS(compat)";
    case PathType::direct:
        return "PHXFS(direct)";
    case PathType::naive:
        return "NAIVE";
    case PathType::cufile:
        return "CUFILE";
    }
    return "?";
}

Summary summarize(const Options &o, const RunResult &r) {
    Summary s;
    std::vector<uint64_t> all;
    double busiest = 0;
    for (const ThreadResult &t : r.threads) {
        s.bytes += t.bytes;
        s.blocks += t.blocks;
        all.insert(all.end(), t.latency_ns.begin(), t.latency_ns.end());
        busiest = std::max(busiest, static_cast<double>(t.io_ns) / 1e9);
    }
    s.ops = all.size();
    // Reads with --verify check every request inline: time only the I/O then.
    // kvcache: always the time inside requests (they are prepared and checked
    // between them).
    s.io_s = (o.verify && !writes(o)) || o.io == IoType::kvcache ? busiest : r.wall_s;
    if (s.io_s > 0) {
        s.gib_per_s = static_cast<double>(s.bytes) / s.io_s / (1ull << 30);
        s.gb_per_s = static_cast<double>(s.bytes) / s.io_s / 1e9;
        s.blocks_per_s = static_cast<double>(s.blocks) / s.io_s;
    }
    if (all.empty())
        return s;
    std::sort(all.begin(), all.end());
    double sum = 0;
    for (uint64_t v : all)
        sum += static_cast<double>(v);
    const auto pct = [&](double p) {
        const size_t i = std::min(all.size() - 1, static_cast<size_t>(p * all.size()));
        return static_cast<double>(all[i]) / 1e3;
    };
    s.avg_us = sum / all.size() / 1e3;
    s.p50_us = pct(0.50);
    s.p99_us = pct(0.99);
    s.min_us = static_cast<double>(all.front()) / 1e3;
    s.max_us = static_cast<double>(all.back()) / 1e3;
    return s;
}

std::string text_report(const Options &o, const RunResult &r, const Summary &s) {
    std::string line = std::string("IoType: ") + io_name(o) + " XferType: " + xfer_type(o) +
                       " Threads: " + std::to_string(o.threads) +
                       " DataSetSize: " + std::to_string(s.bytes >> 10) + "/" +
                       std::to_string((r.planned_bytes ? r.planned_bytes : s.bytes) >> 10) +
                       "(KiB) IOSize: " + std::to_string(r.io_size >> 10) + "(KiB)" +
                       " Throughput: " + fmt("%.2f", s.gib_per_s) +
                       " GiB/sec, Avg_Latency: " + fmt("%.1f", s.avg_us) +
                       " usecs p50: " + fmt("%.1f", s.p50_us) + " p99: " + fmt("%.1f", s.p99_us) +
                       " ops: " + std::to_string(s.ops) + " total_time " + fmt("%.2f", r.wall_s) +
                       " secs cpu: user " + fmt("%.2f", r.user_s) + " sys " + fmt("%.2f", r.sys_s);
    line +=
        "\n" + path_line(o, r) + ", mem " + name(o.mem) + ", device " + std::to_string(o.device);
    if (o.io == IoType::kvcache)
        line += "\nKV: " + kv_describe(o) + ": " + fmt("%.2f", s.gb_per_s) + " GB/s, " +
                fmt("%.0f", s.blocks_per_s) + " blocks/s, per request p50 " +
                fmt("%.3f", s.p50_us / 1e3) + " ms p99 " + fmt("%.3f", s.p99_us / 1e3) + " ms";
    if (!r.note.empty())
        line += "\nNote: " + r.note;
    if (o.verify && r.error.empty())
        line += r.verified
                    ? "\nVerify: OK (" + human_bytes(s.bytes) + " checked against the pattern)"
                    : std::string("\nVerify: FAILED at ") +
                          (o.io == IoType::kvcache ? "store" : "file") + " offset " +
                          std::to_string(*r.mismatch) +
                          (r.mismatch_detail.empty() ? "" : " (" + r.mismatch_detail + ")");
    return line;
}

nlohmann::json json_report(const Options &o, const RunResult &r, const Summary &s) {
    nlohmann::json j = {
        {"io_type", io_name(o)},
        {"xfer_type", xfer_type(o)},
        {"path_option", name(o.path)},
        {"mem", name(o.mem)},
        {"device", o.device},
        {"file", o.file},
        {"file_size", r.file_size},
        {"threads", o.threads},
        {"io_size", r.io_size},
        {"bytes", s.bytes},
        {"planned_bytes", r.planned_bytes},
        {"ops", s.ops},
        {"total_time_s", r.wall_s},
        {"io_time_s", s.io_s},
        {"throughput_gib_s", s.gib_per_s},
        {"latency_us",
         {{"avg", s.avg_us},
          {"p50", s.p50_us},
          {"p99", s.p99_us},
          {"min", s.min_us},
          {"max", s.max_us}}},
        {"cpu_s", {{"user", r.user_s}, {"sys", r.sys_s}}},
        {"cold", o.cold},
    };
    if (o.io == IoType::kvcache) {
        const KvOptions &kv = o.kv;
        j["kvcache"] = {{"op", kv.store ? "store" : "restore"},
                        {"layers", kv.layers},
                        {"kv_heads", kv.heads},
                        {"head_dim", kv.head_dim},
                        {"dtype_bytes", kv.dtype_bytes},
                        {"block_tokens", kv.block_tokens},
                        {"layer_bytes", kv.layer_bytes()},
                        {"block_bytes", kv.block_bytes()},
                        {"blocks_per_request", kv.blocks},
                        {"unit", kv.whole_blocks ? "block" : "layer"},
                        {"submit", kv.per_layer ? "layer" : "request"},
                        {"depth", o.batch ? o.batch : kv.pieces_per_submit()},
                        {"layout", kv.chunk_files ? "chunks" : "file"},
                        {"store_blocks", kv.store_blocks},
                        {"chunk_blocks", kv.chunk_blocks},
                        {"pattern", kv.zipf ? "zipf" : "random"},
                        {"zipf_s", kv.zipf_s},
                        {"prefixes", kv.prefixes},
                        {"pool_blocks", kv.pool_blocks},
                        {"seed", kv.seed},
                        {"requests", s.ops},
                        {"blocks", s.blocks},
                        {"gb_s", s.gb_per_s},
                        {"blocks_per_s", s.blocks_per_s}};
    }
    if (r.have_stats) {
        const bool w = writes(o);
        const auto &d = r.stats.path[PHXFS_PATH_DIRECT];
        const auto &c = r.stats.path[PHXFS_PATH_COMPAT];
        j["paths"] = {{"direct",
                       {{"bytes", w ? d.write_bytes : d.read_bytes},
                        {"calls", w ? d.write_calls : d.read_calls}}},
                      {"compat",
                       {{"bytes", w ? c.write_bytes : c.read_bytes},
                        {"calls", w ? c.write_calls : c.read_calls}}},
                      {"fallbacks", r.stats.fallbacks},
                      {"errors", r.stats.errors}};
    }
    if (!r.note.empty())
        j["note"] = r.note;
    if (!r.error.empty())
        j["error"] = r.error;
    if (o.verify) {
        j["verify"] = r.verified ? "ok" : "failed";
        if (r.mismatch) {
            j["mismatch_offset"] = *r.mismatch;
            j["mismatch_detail"] = r.mismatch_detail;
        }
    }
    return j;
}

} // namespace phxbench
