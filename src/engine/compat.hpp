// The compat path: file data moves through pinned host staging memory, with
// file I/O and device copies overlapped per lane and lanes working in
// parallel on one request.
#pragma once

#include "core/config.hpp"
#include "engine/fileio.hpp"
#include "engine/lanes.hpp"
#include "engine/workers.hpp"
#include "memory/memory.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <thread>
#include <vector>

namespace phxfs::core {

// Buffered writes to one file serialize on its inode lock in the kernel, so
// more writers only contend: on the H100 VM (ext4, 4 GiB in one call) two
// participants wrote 5.3-5.6 GiB/s, four 4.9-5.1, sixteen 4.0-4.4, and one
// thread writing pinned memory 5.4-6.1. Two keep the device copy of one
// chunk overlapped with the write of the other.
inline constexpr unsigned kBufferedWriteWidth = 2;

// A request cut into chunks whose boundaries are multiples of the chunk size
// in file space, so every chunk but the first and last is O_DIRECT aligned
// and each chunk, widened to 4 KiB, still fits one staging buffer.
struct ChunkPlan {
    uint64_t off, end, chunk;
    size_t nchunks;

    ChunkPlan(uint64_t off_, uint64_t end_, uint64_t chunk_) : off(off_), end(end_), chunk(chunk_) {
        const uint64_t first = align_down(off, chunk);
        nchunks = static_cast<size_t>((end - first + chunk - 1) / chunk);
    }
    uint64_t begin_of(size_t i) const { return i == 0 ? off : align_down(off, chunk) + i * chunk; }
    uint64_t end_of(size_t i) const {
        return std::min(end, align_down(off, chunk) + (i + 1) * chunk);
    }
};

class CompatEngine {
  public:
    // Requests run on workers (the device's pool) and its backend's lanes.
    CompatEngine(Backend &backend, WorkerPool &workers, std::atomic<uint64_t> &staging_held)
        : workers_(workers), lanes_(backend, staging_held) {}

    // Reads up to n bytes at file offset off into buf (memory of `kind`);
    // returns the bytes read, short only at end of file.
    size_t read(File &file, void *buf, MemKind kind, size_t n, uint64_t off);
    // Writes n bytes from buf at file offset off, or throws.
    void write(File &file, const void *buf, MemKind kind, size_t n, uint64_t off);

    // One piece of a group (read_many, write_many): a request, or a part
    // of one (core/request.cpp cuts large ones), all through staging; got
    // and error are its outcome.
    struct Piece {
        File *file;
        char *buf; // memory of `kind`
        MemKind kind;
        size_t n;
        uint64_t off;
        size_t got = 0;           // bytes moved (a read: short only at end of file)
        std::exception_ptr error; // set when it failed
        char *place = nullptr;    // where it sits in staging while it moves
    };
    // Many requests of one device, pipelined: the pieces go in loads (as
    // many as fit one staging buffer), each load's file I/O overlapping the
    // device copies of the one before on its lane, and its copies queued as
    // one group and waited for once. A small group takes one lane and reads
    // each load on several threads; a large one takes a lane per thread.
    // Each piece succeeds or fails alone (a failed group copy fails the
    // pieces in it). Pieces must fit a staging buffer of cfg (the snapshot
    // they were cut with: piece_bytes()); one that does not fails alone.
    // Pieces come with place null. Never throws: what fails, fails pieces.
    void read_many(const Config &cfg, Piece *pieces, size_t n);
    void write_many(const Config &cfg, Piece *pieces, size_t n);
    // The most one piece may take: a staging buffer less the 4 KiB a piece
    // may need for alignment. A larger request fits in the pieces of its
    // ChunkPlan at cfg.chunk_bytes.
    static size_t piece_bytes(const Config &cfg) { return cfg.chunk_bytes - kAlign; }

    // Frees idle staging memory; staging_bytes is the budget from now on.
    void trim(size_t staging_bytes) { lanes_.trim(staging_bytes); }

  private:
    struct Load { // pieces [first, last) in one staging buffer
        size_t first = 0, last = 0;
    };
    static void plan_loads(Piece *pieces, size_t n, size_t cap, size_t target,
                           std::vector<Load> &loads);
    static void place(Lane &lane, int which, const Load &h, Piece *pieces);
    template <typename Io> void fill(unsigned width, const Load &h, Piece *pieces, Io &&io);
    bool queue_copies(Lane &lane, Stream &stream, const Load &h, Piece *pieces, bool to_device);
    void wait_copies(Stream &stream, const Load &h, Piece *pieces);
    void fail_copies(Stream &stream, const Load &h, Piece *pieces, std::exception_ptr e,
                     bool queuing);
    void read_loads(Lane &lane, Stream &stream, const std::vector<Load> &loads,
                    std::atomic<size_t> &next, unsigned width, Piece *pieces);
    void write_loads(Lane &lane, Stream &stream, const std::vector<Load> &loads,
                     std::atomic<size_t> &next, unsigned width, Piece *pieces);
    void many(const Config &cfg, Piece *pieces, size_t n, bool write);

    template <typename ChunkLoop>
    void run(const Config &cfg, unsigned max_width, size_t nchunks, size_t chunk_bytes,
             MemKind kind, ChunkLoop &&loop);

    WorkerPool &workers_;
    LanePool lanes_;
};

// Runs loop(lane, stream) on as many participants as the request can use;
// a loop returns once the request's work is all taken. The caller always
// gets a lane (waiting if need be). Pool workers wait for a lane while the
// caller's loop runs: where requests run side by side (a batch's executor
// and its reaper), each gets lanes as the other's participants finish,
// instead of the second running on the few lanes free when it started.
// No deadlock: a lane's holder waits for nothing but its own I/O and
// copies, and the caller's loop ends whether workers joined or not.
template <typename ChunkLoop>
void CompatEngine::run(const Config &cfg, unsigned max_width, size_t nchunks, size_t chunk_bytes,
                       MemKind kind, ChunkLoop &&loop) {
    const unsigned width =
        static_cast<unsigned>(std::min<size_t>(std::min(cfg.threads, max_width), nchunks));
    const auto caller = std::this_thread::get_id();
    std::atomic<bool> taken{false}; // the caller's loop has ended: no work is left to take
    struct Close {                  // however the caller's share ends (a failed acquire too)
        LanePool &pool;
        std::atomic<bool> &taken;
        ~Close() { pool.close(taken); }
    };
    workers_.run(width, [&] {
        const bool is_caller = std::this_thread::get_id() == caller;
        std::optional<Close> close;
        if (is_caller)
            close.emplace(lanes_, taken); // in place: a temporary would close at once
        auto lane = is_caller ? lanes_.acquire(chunk_bytes, cfg.staging_bytes)
                              : lanes_.try_acquire(chunk_bytes, cfg.staging_bytes, &taken);
        if (!lane)
            return;
        LaneLease lease(lanes_, std::move(lane));
        Stream &stream = kind == MemKind::host ? host_stream() : *lease->stream;
        loop(*lease, stream);
    });
}

} // namespace phxfs::core
