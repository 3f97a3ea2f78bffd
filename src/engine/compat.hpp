// The compat path: file data moves through pinned host staging memory, with
// file I/O and device copies overlapped per lane and lanes working in
// parallel on one request.
#pragma once

#include "core/config.hpp"
#include "engine/fileio.hpp"
#include "engine/lanes.hpp"
#include "memory/memory.hpp"

#include <cstddef>
#include <cstdint>

namespace phxfs::core {

class CompatEngine {
  public:
    CompatEngine(Backend &backend, std::atomic<uint64_t> &staging_held)
        : lanes_(backend, staging_held) {}

    // Reads up to n bytes at file offset off into buf (memory of `kind`);
    // returns the bytes read, short only at end of file.
    size_t read(File &file, void *buf, MemKind kind, size_t n, uint64_t off);
    // Writes n bytes from buf at file offset off, or throws.
    void write(File &file, const void *buf, MemKind kind, size_t n, uint64_t off);

    // Frees idle staging memory; staging_bytes is the budget from now on.
    void trim(size_t staging_bytes) { lanes_.trim(staging_bytes); }

  private:
    template <typename ChunkLoop>
    void run(const Config &cfg, unsigned max_width, size_t nchunks, size_t chunk_bytes,
             MemKind kind, ChunkLoop &&loop);

    LanePool lanes_;
};

} // namespace phxfs::core
