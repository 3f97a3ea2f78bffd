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
#include <exception>

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

    // One request of a group (read_many, write_many): whole, through
    // staging; got and error are its outcome.
    struct Piece {
        File *file;
        char *buf; // memory of `kind`
        MemKind kind;
        size_t n;
        uint64_t off;
        size_t got = 0;           // bytes moved (a read: short only at end of file)
        std::exception_ptr error; // set when it failed
    };
    // Many small requests of one device with one lane: their file I/O one
    // after the other, their copies queued as one group and waited for once
    // per lane's worth. Each piece succeeds or fails alone (a failed group
    // copy fails the pieces in it). Pieces must fit a lane (lane_bytes()).
    void read_many(Piece *pieces, size_t n);
    void write_many(Piece *pieces, size_t n);
    // The most one piece may take of a lane: the staging of both buffers,
    // less the 4 KiB a piece may need for alignment.
    static size_t lane_bytes(const Config &cfg) { return 2 * cfg.chunk_bytes - kAlign; }

    // Frees idle staging memory; staging_bytes is the budget from now on.
    void trim(size_t staging_bytes) { lanes_.trim(staging_bytes); }

  private:
    template <typename ChunkLoop>
    void run(const Config &cfg, unsigned max_width, size_t nchunks, size_t chunk_bytes,
             MemKind kind, ChunkLoop &&loop);

    LanePool lanes_;
};

} // namespace phxfs::core
