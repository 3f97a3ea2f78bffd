// options.cpp - the command line of phxfs-bench (CLI11).
#include "options.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <stdexcept>

namespace phxbench {

uint64_t parse_size(const std::string &s) {
    if (s.empty())
        throw std::invalid_argument("empty size");
    size_t used = 0;
    unsigned long long v = 0;
    try {
        v = std::stoull(s, &used, 10);
    } catch (const std::exception &) {
        throw std::invalid_argument("bad size '" + s + "'");
    }
    std::string suffix = s.substr(used);
    if (!suffix.empty() && (suffix.back() == 'B' || suffix.back() == 'b'))
        suffix.pop_back(); // "16MB", "16MiB": both powers of 1024
    if (suffix.size() == 2 && (suffix[1] == 'i' || suffix[1] == 'I'))
        suffix.pop_back();
    int shift = 0;
    if (suffix.size() > 1)
        throw std::invalid_argument("bad size suffix in '" + s + "'");
    if (!suffix.empty()) {
        switch (suffix[0]) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        case 't':
        case 'T':
            shift = 40;
            break;
        default:
            throw std::invalid_argument("bad size suffix in '" + s + "'");
        }
    }
    if (shift && v > (~0ull >> shift))
        throw std::invalid_argument("size '" + s + "' overflows");
    return static_cast<uint64_t>(v) << shift;
}

std::vector<uint64_t> parse_size_sweep(const std::string &s) {
    const auto c1 = s.find(':');
    if (c1 == std::string::npos)
        return {parse_size(s)};
    const auto c2 = s.find(':', c1 + 1);
    if (c2 == std::string::npos)
        throw std::invalid_argument("a sweep is min:max:step, got '" + s + "'");
    const uint64_t lo = parse_size(s.substr(0, c1));
    const uint64_t hi = parse_size(s.substr(c1 + 1, c2 - c1 - 1));
    std::string step = s.substr(c2 + 1);
    const bool mult = !step.empty() && (step[0] == 'x' || step[0] == '*');
    const uint64_t st = parse_size(mult ? step.substr(1) : step);
    if (lo == 0 || hi < lo || st == 0 || (mult && st < 2))
        throw std::invalid_argument("bad sweep '" + s +
                                    "' (want 0 < min <= max, step > 0, xN > 1)");
    std::vector<uint64_t> out;
    for (uint64_t v = lo; v <= hi; v = mult ? v * st : v + st) {
        out.push_back(v);
        if (out.size() > 4096)
            throw std::invalid_argument("sweep '" + s + "' has too many steps");
    }
    return out;
}

bool is_write(IoType t) {
    return t == IoType::write || t == IoType::randwrite;
}
bool writes(const Options &o) {
    return is_write(o.io) || (o.io == IoType::kvcache && o.kv.store);
}
bool is_random(IoType t) {
    return t == IoType::randread || t == IoType::randwrite;
}

const char *name(IoType t) {
    switch (t) {
    case IoType::read:
        return "READ";
    case IoType::write:
        return "WRITE";
    case IoType::randread:
        return "RANDREAD";
    case IoType::randwrite:
        return "RANDWRITE";
    case IoType::kvcache:
        return "KVCACHE";
    }
    return "?";
}
const char *io_name(const Options &o) {
    if (o.io == IoType::kvcache)
        return o.kv.store ? "KV-STORE" : "KV-RESTORE";
    return name(o.io);
}
const char *name(MemType t) {
    switch (t) {
    case MemType::device:
        return "device";
    case MemType::pinned:
        return "pinned";
    case MemType::pageable:
        return "pageable";
    }
    return "?";
}
const char *name(PathType t) {
    switch (t) {
    case PathType::phxfs:
        return "phxfs";
    case PathType::compat:
        return "compat";
    case PathType::direct:
        return "direct";
    case PathType::naive:
        return "naive";
    case PathType::cufile:
        return "cufile";
    }
    return "?";
}

std::string human_bytes(uint64_t n) {
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(n);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (u == 0 || v == static_cast<double>(static_cast<uint64_t>(v)))
        std::snprintf(buf, sizeof buf, "%.0f %s", v, units[u]);
    else
        std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
    return buf;
}

namespace {

// The kvcache workload's options (--kv-*).
void add_kv_options(CLI::App &app, KvOptions &kv) {
    const auto g = "kvcache (-I kvcache)";
    const auto num = [&](const char *flag, unsigned &v, const char *what, unsigned max = 1u << 24) {
        app.add_option(flag, v, what)->group(g)->capture_default_str()->check(CLI::Range(1u, max));
    };
    num("--kv-layers", kv.layers, "model layers", 4096);
    num("--kv-heads", kv.heads, "KV heads", 4096);
    num("--kv-head-dim", kv.head_dim, "head dimension", 65536);
    num("--kv-dtype-bytes", kv.dtype_bytes, "bytes per element (2: fp16/bf16)", 16);
    num("--kv-block-tokens", kv.block_tokens, "tokens per block", 1u << 20);
    num("--kv-blocks", kv.blocks, "blocks per request (the prefix restored or stored)");
    app.add_option("--kv-store-blocks", kv.store_blocks, "blocks in the store (default 4 x blocks)")
        ->group(g)
        ->check(CLI::Range(1u, 1u << 30));
    num("--kv-chunk-blocks", kv.chunk_blocks,
        "blocks per chunk: the store's unit of placement (a file each with --kv-layout chunks)");
    num("--kv-prefixes", kv.prefixes, "distinct prefixes the requests choose among");
    app.add_option("--kv-pool-blocks", kv.pool_blocks,
                   "slots of each thread's block pool (default: blocks per request)")
        ->group(g)
        ->check(CLI::Range(1u, 1u << 30));
    num("--kv-requests", kv.requests, "requests per thread (unless -T)");
    app.add_option("--kv-seed", kv.seed, "seed of the prefix and slot choices")
        ->group(g)
        ->capture_default_str();
    app.add_option("--kv-zipf-s", kv.zipf_s, "Zipf exponent of prefix popularity")
        ->group(g)
        ->capture_default_str()
        ->check(CLI::Range(0.0, 10.0));
    const auto choice = [&](const char *flag, bool &v, const char *off, const char *on,
                            const char *what) {
        app.add_option_function<std::string>(
               flag, [&v, on](const std::string &x) { v = x == on; }, what)
            ->group(g)
            ->check(CLI::IsMember({off, on}))
            ->default_str(off);
    };
    choice("--kv-layout", kv.chunk_files, "file", "chunks",
           "file: one file of every block; chunks: -f is a directory with a file per chunk");
    choice("--kv-pattern", kv.zipf, "random", "zipf",
           "which prefix a request takes: uniform, or Zipf-popular (--kv-zipf-s)");
    choice("--kv-op", kv.store, "restore", "store", "restore: store -> pool; store: pool -> store");
    choice("--kv-unit", kv.whole_blocks, "layer", "block",
           "a transfer per layer of a block, or per whole block (all layers)");
    choice("--kv-submit", kv.per_layer, "request", "layer",
           "one batch per request, or one per layer (each waited for in turn)");
}

void check_kv_options(Options &o, bool file_options) {
    KvOptions &kv = o.kv;
    if (file_options)
        throw std::invalid_argument(
            "-I kvcache: sizes come from the --kv-* options (no -s, -i, -b or --qd)");
    if (o.path == PathType::naive)
        throw std::invalid_argument("-I kvcache runs through libphxfs or cuFile, not -x naive");
    if (uint64_t{kv.blocks} * kv.layers > (1u << 24))
        throw std::invalid_argument("-I kvcache: over 2^24 transfers per request");
    if (kv.pieces_per_submit() > 65536 && !o.batch)
        throw std::invalid_argument("-I kvcache: over 65536 transfers per batch; give --batch");
    if (kv.whole_blocks && kv.per_layer)
        throw std::invalid_argument("--kv-submit layer needs --kv-unit layer");
    if (!kv.store_blocks)
        kv.store_blocks = static_cast<unsigned>(std::min<uint64_t>(
            uint64_t{4} * kv.blocks, (1u << 30) / kv.chunk_blocks * kv.chunk_blocks));
    kv.store_blocks = (kv.store_blocks + kv.chunk_blocks - 1) / kv.chunk_blocks * kv.chunk_blocks;
    if (kv.store_blocks < kv.blocks)
        throw std::invalid_argument("--kv-store-blocks must be at least --kv-blocks");
    if (!kv.pool_blocks)
        kv.pool_blocks = kv.blocks;
    if (kv.pool_blocks < kv.blocks)
        throw std::invalid_argument("--kv-pool-blocks must be at least --kv-blocks");
    if (kv.layer_bytes() > (uint64_t{1} << 40) / kv.layers / kv.store_blocks)
        throw std::invalid_argument("-I kvcache: a store over 1 TiB");
}

} // namespace

Options parse_options(int argc, char **argv) {
    Options o;
    CLI::App app{"phxfs-bench: a gdsio-like load generator for libphxfs. Moves a generated file "
                 "between storage and device memory and reports throughput, latency and the path "
                 "that moved the bytes."};
    std::string size_s, io_s = "1M", total_s;
    double duration = 0;
    const std::map<std::string, IoType> io_map{{"read", IoType::read},
                                               {"write", IoType::write},
                                               {"randread", IoType::randread},
                                               {"randwrite", IoType::randwrite},
                                               {"kvcache", IoType::kvcache}};
    const std::map<std::string, MemType> mem_map{
        {"device", MemType::device}, {"pinned", MemType::pinned}, {"pageable", MemType::pageable}};
    const std::map<std::string, PathType> path_map{{"phxfs", PathType::phxfs},
                                                   {"compat", PathType::compat},
                                                   {"direct", PathType::direct},
                                                   {"naive", PathType::naive},
                                                   {"cufile", PathType::cufile}};
    app.add_option("-f,--file", o.file,
                   "the data file (created with the pattern when missing "
                   "or smaller than --size)")
        ->required();
    auto *size_opt = app.add_option("-s,--size", size_s,
                                    "file size, with K M G T suffixes (default: the size of "
                                    "an existing file)");
    auto *io_opt = app.add_option("-i,--io-size", io_s,
                                  "request size, or a sweep min:max:step (step +N or xN)")
                       ->capture_default_str();
    app.add_option("-t,--threads", o.threads, "threads, each with its own buffer")
        ->capture_default_str()
        ->check(CLI::Range(1u, 1024u));
    std::string io_name = "read", mem_name = "device", path_name = "phxfs";
    app.add_option("-I,--io", io_name, "read|write|randread|randwrite|kvcache")
        ->check(CLI::IsMember(io_map, CLI::ignore_case))
        ->capture_default_str();
    app.add_option("-d,--gpu", o.device, "phxfs device id")->capture_default_str();
    app.add_option("-m,--mem", mem_name, "device|pinned|pageable buffers")
        ->check(CLI::IsMember(mem_map, CLI::ignore_case))
        ->capture_default_str();
    app.add_option("-x,--path", path_name,
                   "phxfs (library auto mode), compat, direct, naive (pread + copy), or cufile "
                   "(NVIDIA cuFile, loaded at run time)")
        ->check(CLI::IsMember(path_map, CLI::ignore_case))
        ->capture_default_str();
    auto *dur =
        app.add_option("-T,--duration", duration, "run for SECONDS")->check(CLI::PositiveNumber);
    auto *tot = app.add_option("-b,--bytes", total_s, "move TOTAL bytes in all (K M G suffixes)");
    dur->excludes(tot);
    app.add_flag("--verify", o.verify, "check every byte moved against the file pattern");
    app.add_flag("--cold", o.cold, "drop the file from the page cache and open it O_DIRECT");
    app.add_flag("--json", o.json, "print one JSON object per run");
    std::string bounce = "pageable";
    app.add_option("--bounce", bounce,
                   "naive path with GPU buffers: the host buffer it reads into, pageable or pinned")
        ->check(CLI::IsMember({"pageable", "pinned"}))
        ->capture_default_str();
    app.add_flag("--keep", o.keep, "keep a file this run created (default: remove it)");
    auto *batch = app.add_option("--batch", o.batch,
                                 "each thread submits N requests at once as a phxfs batch and "
                                 "reaps them (libphxfs paths; cuFile's batch API with -x "
                                 "cufile); -I kvcache: transfers in flight at most (default: all "
                                 "of a batch)")
                      ->check(CLI::Range(1u, 65536u));
    auto *qd = app.add_option("--qd", o.qd,
                              "each thread keeps N futures in flight (phxfs_file_read_async; "
                              "libphxfs paths)")
                   ->check(CLI::Range(1u, 65536u));
    batch->excludes(qd);
    add_kv_options(app, o.kv);
    app.add_option("--stream", o.stream,
                   "enqueue N stream-ordered requests on one CUDA stream, then synchronize "
                   "once: phxfs_file_read_stream (-x phxfs), or cuFile's cuFileReadAsync (-x "
                   "cufile)")
        ->check(CLI::Range(1u, 1u << 24))
        ->excludes(batch)
        ->excludes(qd);
    try {
        app.parse(argc, argv);
        const auto lower = [](std::string v) {
            for (char &c : v)
                c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            return v;
        };
        o.io = io_map.at(lower(io_name));
        o.mem = mem_map.at(lower(mem_name));
        o.path = path_map.at(lower(path_name));
        o.bounce_pinned = bounce == "pinned";
        if (!size_s.empty())
            o.file_size = parse_size(size_s);
        o.io_sizes = parse_size_sweep(io_s);
        if (*dur)
            o.duration_s = duration;
        if (*tot)
            o.total_bytes = parse_size(total_s);
        for (uint64_t s : o.io_sizes)
            if (s == 0)
                throw std::invalid_argument("io size must be > 0");
        if ((o.batch || o.qd) && o.path == PathType::naive)
            throw std::invalid_argument("--batch and --qd run libphxfs's batches and futures "
                                        "(-x phxfs, compat, direct) or cuFile's batch API (-x "
                                        "cufile --batch)");
        if (o.stream && ((o.path != PathType::phxfs && o.path != PathType::cufile) || o.verify ||
                         o.threads != 1 || o.mem == MemType::pageable))
            throw std::invalid_argument(
                "--stream runs stream-ordered requests on one thread (-t 1), libphxfs's (-x "
                "phxfs) or cuFile's stream API (-x cufile), into memory a kernel reaches (-m "
                "device or pinned), without --verify");
        if (o.qd && o.path == PathType::cufile)
            throw std::invalid_argument("-x cufile has batches (--batch), not futures (--qd)");
        if (o.io == IoType::kvcache)
            check_kv_options(o, *size_opt || *io_opt || *tot || *qd);
    } catch (const CLI::ParseError &e) {
        std::exit(app.exit(e) == 0 ? 0 : 1);
    } catch (const std::invalid_argument &e) {
        std::fprintf(stderr, "phxfs-bench: %s\nRun with --help for more information.\n", e.what());
        std::exit(1);
    }
    return o;
}

} // namespace phxbench
