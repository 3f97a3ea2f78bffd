// The group engine: the pieces of many requests of one device (a batch's
// group, core/request.cpp's run_group) packed into loads of one staging
// buffer, each lane reading a load while the previous one's batched copy
// runs (CompatEngine::read_many, write_many).
#include "engine/compat.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "engine/chunk_io.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <optional>

namespace phxfs::core {

namespace {

// Loads per lane that a group of many pieces is cut into at least (see
// CompatEngine::many), unless that makes loads smaller than kMinLoad: a
// load costs a copy, a kernel launch and a wait, whatever its size.
constexpr unsigned kLoadsPerLane = 4;
constexpr size_t kMinLoad = size_t{1} << 20;

// Lays pieces out in one staging buffer: each at a 4 KiB boundary plus its
// file offset's skew, as read_chunk and write_chunk lay a chunk out.
struct Packer {
    static constexpr size_t kFull = SIZE_MAX;
    size_t cap, used = 0;
    // Where [off, off + n) goes in the buffer, or kFull.
    size_t take(uint64_t off, size_t n) {
        const size_t need = align_up(off % kAlign + n, kAlign);
        if (used + need > cap)
            return kFull;
        used += need;
        return used - need;
    }
};

// How many threads the file I/O of `count` small pieces is worth: a pread
// from the page cache takes about as long as waking a thread.
unsigned fill_width(const Config &cfg, size_t count) {
    return static_cast<unsigned>(std::min<size_t>(cfg.threads, count / 4 + 1));
}

} // namespace

// Cuts pieces into loads: consecutive pieces that fit one staging buffer of
// cap bytes together, a load closed once it holds `target` bytes or more
// (or the next piece does not fit). A piece that fits no buffer fails
// alone: the caller's mistake.
void CompatEngine::plan_loads(Piece *pieces, size_t n, size_t cap, size_t target,
                              std::vector<Load> &loads) {
    loads.clear();
    Packer pk{cap};
    for (size_t i = 0; i < n; ++i) {
        Piece &p = pieces[i];
        if (p.error)
            continue;
        if (Packer{cap}.take(p.off, p.n) == Packer::kFull) { // before pk or the load change
            p.error = std::make_exception_ptr(Error(EINVAL, "piece larger than a staging buffer"));
            continue;
        }
        if (loads.empty() || pk.used >= target || pk.take(p.off, p.n) == Packer::kFull) {
            pk = Packer{cap};
            pk.take(p.off, p.n);
            loads.push_back({i, i});
        }
        loads.back().last = i + 1;
    }
}

// Places the pieces of load h in the lane's buffer `which` (the same layout
// plan_loads measured).
void CompatEngine::place(Lane &lane, int which, const Load &h, Piece *pieces) {
    Packer pk{lane.bytes};
    for (size_t i = h.first; i < h.last; ++i) {
        Piece &p = pieces[i];
        if (p.error)
            continue;
        const size_t at = pk.take(p.off, p.n);
        if (at == Packer::kFull) { // planned for another size: never write past the lane
            p.error = std::make_exception_ptr(
                Error(EINVAL, "piece does not fit the staging buffer it was planned for"));
            continue;
        }
        p.place = lane.staging(which) + at;
    }
}

// Runs io(i) for the pieces of h on `width` threads (1: this one); a
// piece's exception is its own.
template <typename Io>
void CompatEngine::fill(unsigned width, const Load &h, Piece *pieces, Io &&io) {
    std::atomic<size_t> next{h.first};
    workers_.run(width, [&] {
        for (size_t i; (i = next.fetch_add(1)) < h.last;) {
            if (pieces[i].error || !pieces[i].place)
                continue;
            try {
                io(i);
            } catch (...) {
                pieces[i].error = std::current_exception();
            }
        }
    });
}

// Queues the device copies of h's pieces as one group (host buffers are
// copied on the spot); returns whether any was queued.
bool CompatEngine::queue_copies(Lane &lane, Stream &stream, const Load &h, Piece *pieces,
                                bool to_device) {
    std::vector<Stream::Copy> &copies = lane.copies;
    copies.clear();
    for (size_t i = h.first; i < h.last; ++i) {
        Piece &p = pieces[i];
        if (p.error || !p.place)
            continue;
        char *stg = p.place + p.off % kAlign;
        const size_t n = to_device ? p.got : p.n;
        if (n == 0)
            continue;
        if (p.kind == MemKind::host) {
            to_device ? std::memcpy(p.buf, stg, n) : std::memcpy(stg, p.buf, n);
            continue;
        }
        const Stream::Copy c =
            to_device ? Stream::Copy{p.buf, stg, n} : Stream::Copy{stg, p.buf, n};
        // Pieces adjacent in staging and in the buffer go as one copy.
        if (!copies.empty()) {
            Stream::Copy &last = copies.back();
            if (static_cast<char *>(last.dst) + last.n == c.dst &&
                static_cast<const char *>(last.src) + last.n == c.src) {
                last.n += c.n;
                continue;
            }
        }
        copies.push_back(c);
    }
    if (copies.empty())
        return false;
    if (auto f = fault::at(fault::Site::copy))
        fail(f->err, "copy between staging and the buffer (injected)");
    if (to_device)
        stream.to_buffers(copies.data(), copies.size());
    else
        stream.to_stagings(copies.data(), copies.size());
    return true;
}

// Fails the pieces of h whose bytes went through the device copies with e,
// once what was queued has finished (the lane goes back idle).
void CompatEngine::fail_copies(Stream &stream, const Load &h, Piece *pieces, std::exception_ptr e,
                               bool queuing) {
    try {
        stream.wait();
    } catch (...) { // the first error is the one to report
    }
    // A failure while queuing may have come before some host pieces were
    // copied on the spot: they fail too, rather than move stale bytes.
    for (size_t i = h.first; i < h.last; ++i)
        if (!pieces[i].error && (queuing || pieces[i].kind != MemKind::host))
            pieces[i].error = e;
}

// Waits for the copies queued for h; a failure is that of every piece of h
// whose bytes were in them.
void CompatEngine::wait_copies(Stream &stream, const Load &h, Piece *pieces) {
    try {
        stream.wait();
    } catch (...) {
        fail_copies(stream, h, pieces, std::current_exception(), false);
    }
}

// Reads, on one lane: the loads it takes from `next`, each read from the
// file (on `width` threads) while the previous one's copies to the device
// run.
void CompatEngine::read_loads(Lane &lane, Stream &stream, const std::vector<Load> &loads,
                              std::atomic<size_t> &next, unsigned width, Piece *pieces) {
    std::optional<Load> copying; // queued from the other buffer
    int cur = 0;
    for (size_t k; (k = next.fetch_add(1)) < loads.size(); cur ^= 1) {
        const Load &h = loads[k];
        place(lane, cur, h, pieces);
        fill(width, h, pieces, [&](size_t i) {
            Piece &p = pieces[i];
            p.got = read_chunk(*p.file, p.place, p.off, p.off + p.n);
        });
        if (copying)
            wait_copies(stream, *copying, pieces);
        copying.reset();
        try {
            if (queue_copies(lane, stream, h, pieces, true))
                copying = h;
        } catch (...) {
            fail_copies(stream, h, pieces, std::current_exception(), true);
        }
    }
    if (copying)
        wait_copies(stream, *copying, pieces);
}

// Writes, on one lane: the loads it takes from `next`, each copied out of
// the device while the previous one is written to the file (on `width`
// threads).
void CompatEngine::write_loads(Lane &lane, Stream &stream, const std::vector<Load> &loads,
                               std::atomic<size_t> &next, unsigned width, Piece *pieces) {
    std::optional<Load> ready; // in the other buffer, copied, to be written
    auto write = [&](const Load &h) {
        fill(width, h, pieces, [&](size_t i) {
            Piece &p = pieces[i];
            write_chunk(*p.file, p.place, p.off, p.off + p.n);
            p.got = p.n;
        });
    };
    int cur = 0;
    for (size_t k; (k = next.fetch_add(1)) < loads.size(); cur ^= 1) {
        const Load &h = loads[k];
        place(lane, cur, h, pieces);
        bool queued = false;
        try {
            queued = queue_copies(lane, stream, h, pieces, false);
        } catch (...) {
            fail_copies(stream, h, pieces, std::current_exception(), true);
        }
        if (ready)
            write(*ready);
        if (queued)
            wait_copies(stream, h, pieces);
        ready = h;
    }
    if (ready)
        write(*ready);
}

// A group that fits two staging buffers runs on one lane, each buffer's
// file I/O on several threads (many tiny pieces: the latency of a few). A
// larger one is cut into kLoadsPerLane loads per thread or more, and
// each lane takes loads on its own, its file I/O on its own thread: no
// participant waits for another between loads, as for a large request.
void CompatEngine::many(const Config &cfg, Piece *pieces, size_t n, bool write) {
    thread_local std::vector<Load> kept; // a warm group allocates nothing
    std::vector<Load> &loads = kept;     // (the participants' threads see this one)
    try {
        plan_loads(pieces, n, cfg.chunk_bytes, cfg.chunk_bytes, loads);
        if (loads.empty())
            return;
        std::atomic<size_t> next{0};
        if (loads.size() <= 2) {
            LaneLease lease(lanes_, lanes_.acquire(cfg.chunk_bytes, cfg.staging_bytes));
            const unsigned width = fill_width(cfg, n);
            write ? write_loads(*lease, *lease->stream, loads, next, width, pieces)
                  : read_loads(*lease, *lease->stream, loads, next, width, pieces);
            return;
        }
        // Each lane gets several loads: a lane overlaps a load's file I/O
        // with the previous one's copies, so with one load per lane every
        // lane reads at once and then every lane copies at once (64 KiB
        // reads in batches of 1024 ran at 0.38 of the copy limit on an H100
        // that way). But no load is cut below kMinLoad.
        size_t bytes = 0;
        for (size_t i = 0; i < n; ++i)
            bytes += pieces[i].error ? 0 : pieces[i].n;
        const size_t per_load = bytes / (size_t{kLoadsPerLane} * cfg.threads);
        plan_loads(pieces, n, cfg.chunk_bytes, std::max(per_load, kMinLoad), loads);
        // Buffered writes to one file contend on its inode lock (see
        // kBufferedWriteWidth); pieces of several files gain from more
        // writers.
        const bool one_buffered_file = write && !pieces[0].file->info().direct &&
                                       std::all_of(pieces, pieces + n, [&](const Piece &p) {
                                           return p.file == pieces[0].file;
                                       });
        const unsigned max_width = one_buffered_file ? kBufferedWriteWidth : kMaxThreads;
        run(cfg, max_width, loads.size(), cfg.chunk_bytes, MemKind::cuda,
            [&](Lane &lane, Stream &stream) {
                write ? write_loads(lane, stream, loads, next, 1, pieces)
                      : read_loads(lane, stream, loads, next, 1, pieces);
            });
    } catch (...) {
        // No lane could be had (pinned memory ran out), or planning ran out
        // of memory: the pieces no lane took fail with it; those a lane
        // took have their outcome (run() returns once every lane is done).
        const std::exception_ptr e = std::current_exception();
        for (size_t i = 0; i < n; ++i)
            if (!pieces[i].error && !pieces[i].place)
                pieces[i].error = e;
    }
}

void CompatEngine::read_many(const Config &cfg, Piece *pieces, size_t n) {
    many(cfg, pieces, n, false);
}

void CompatEngine::write_many(const Config &cfg, Piece *pieces, size_t n) {
    many(cfg, pieces, n, true);
}

} // namespace phxfs::core
