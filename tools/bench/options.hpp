// options.hpp - the command line of phxfs-bench.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace phxbench {

enum class IoType { read, write, randread, randwrite, kvcache };
enum class MemType { device, pinned, pageable };
enum class PathType { phxfs, compat, direct, naive, cufile };

// -I kvcache: a model's KV cache restored from (or stored to) a block store,
// a prefix of blocks per request. See kvcache.hpp.
struct KvOptions {
    unsigned layers = 32, heads = 8, head_dim = 128, dtype_bytes = 2, block_tokens = 16;
    unsigned blocks = 512;      // blocks per request (the prefix)
    unsigned store_blocks = 0;  // blocks in the store (0: 4 x blocks)
    unsigned chunk_blocks = 16; // blocks per chunk (a file each with chunk_files)
    unsigned prefixes = 64;     // distinct prefixes the requests choose among
    unsigned pool_blocks = 0;   // slots of the block pool (0: blocks)
    unsigned requests = 16;     // per thread, unless -T
    uint64_t seed = 1;
    double zipf_s = 1.1;
    bool chunk_files = false;  // --kv-layout chunks (else one file)
    bool zipf = false;         // --kv-pattern zipf (else random)
    bool store = false;        // --kv-op store (else restore)
    bool whole_blocks = false; // --kv-unit block (else layer)
    bool per_layer = false;    // --kv-submit layer (else request)

    // K and V of every head, for the block's tokens, in one layer.
    uint64_t layer_bytes() const {
        return uint64_t{2} * heads * head_dim * dtype_bytes * block_tokens;
    }
    uint64_t block_bytes() const { return layer_bytes() * layers; }
    // Transfers of a request, and of one submission (--kv-submit).
    unsigned pieces() const { return whole_blocks ? blocks : blocks * layers; }
    unsigned pieces_per_submit() const { return per_layer ? blocks : pieces(); }
};

struct Options {
    std::string file;
    uint64_t file_size = 0;
    std::vector<uint64_t> io_sizes; // one run each
    unsigned threads = 1;
    IoType io = IoType::read;
    int device = 0;
    MemType mem = MemType::device;
    PathType path = PathType::phxfs;
    std::optional<double> duration_s;    // -T
    std::optional<uint64_t> total_bytes; // -b
    bool verify = false;
    bool cold = false;
    bool json = false;
    bool keep = false;
    bool bounce_pinned = false; // naive: bounce through pinned memory (default pageable)
    // Many requests in flight per thread (libphxfs paths): batches of `batch`
    // requests submitted and reaped together, or `qd` futures kept in flight.
    unsigned batch = 0;
    unsigned qd = 0;
    KvOptions kv;
    unsigned stream = 0; // --stream N: N stream-ordered requests on one CUDA stream
};

// Parses argv; prints help or the error and exits (0 for --help, 1 for
// usage errors) when there is nothing to run.
Options parse_options(int argc, char **argv);

// "16M", "4k", "1G", "4096" -> bytes (K/M/G/T are powers of 1024). Throws
// std::invalid_argument.
uint64_t parse_size(const std::string &s);
// "16M" -> {16M}; "4K:1M:x2" -> 4K, 8K, ... 1M; "1M:4M:1M" -> 1M, 2M, 3M, 4M.
std::vector<uint64_t> parse_size_sweep(const std::string &s);

bool is_write(IoType t);
// Whether the run writes the file: a write type, or kvcache --kv-op store.
bool writes(const Options &o);
bool is_random(IoType t);
const char *name(IoType t);
// What IoType shows: name(o.io), or KV-RESTORE / KV-STORE.
const char *io_name(const Options &o);
const char *name(MemType t);
const char *name(PathType t);
std::string human_bytes(uint64_t n); // "16 MiB", "1.5 GiB"

} // namespace phxbench
