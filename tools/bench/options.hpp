// options.hpp - the command line of phxfs-bench.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace phxbench {

enum class IoType { read, write, randread, randwrite };
enum class MemType { device, pinned, pageable };
enum class PathType { phxfs, compat, direct, naive, cufile };

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
bool is_random(IoType t);
const char *name(IoType t);
const char *name(MemType t);
const char *name(PathType t);
std::string human_bytes(uint64_t n); // "16 MiB", "1.5 GiB"

} // namespace phxbench
