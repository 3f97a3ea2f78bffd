#include "engine/compat.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "engine/workers.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

namespace phxfs::core {

namespace {

// Buffered writes to one file serialize on its inode lock in the kernel, so
// more writers only contend: on the H100 VM (ext4, 4 GiB in one call) two
// participants wrote 5.3-5.6 GiB/s, four 4.9-5.1, sixteen 4.0-4.4, and one
// thread writing pinned memory 5.4-6.1. Two keep the device copy of one
// chunk overlapped with the write of the other.
constexpr unsigned kBufferedWriteWidth = 2;

// Loads per lane that a group of many pieces is cut into at least (see
// CompatEngine::many), unless that makes loads smaller than kMinLoad: a
// load costs a copy, a kernel launch and a wait, whatever its size.
constexpr unsigned kLoadsPerLane = 4;
constexpr size_t kMinLoad = size_t{1} << 20;

// State shared by the participants of one request.
class Job {
  public:
    std::optional<size_t> grab(size_t nchunks) {
        if (failed_.load(std::memory_order_relaxed))
            return std::nullopt;
        const size_t i = next_.fetch_add(1);
        return i < nchunks ? std::optional(i) : std::nullopt;
    }
    void set_error(std::exception_ptr e) {
        std::lock_guard lock(m_);
        if (!error_)
            error_ = e;
        failed_ = true;
    }
    void note_short(uint64_t data_end) {
        std::lock_guard lock(m_);
        short_at_ = std::min(short_at_, data_end);
    }
    void rethrow() const {
        if (error_)
            std::rethrow_exception(error_);
    }
    uint64_t short_at() const { return short_at_; }

  private:
    std::atomic<size_t> next_{0};
    std::atomic<bool> failed_{false};
    std::mutex m_;
    std::exception_ptr error_;
    uint64_t short_at_ = UINT64_MAX;
};

// Records a participant's failure (call from a catch block) once its copy in
// flight has finished: the lane goes back to the pool and must be idle.
void fail_participant(Job &job, Stream &stream, bool pending) {
    if (pending) {
        try {
            stream.wait();
        } catch (...) { // the first error is the one to report
        }
    }
    job.set_error(std::current_exception());
}

// Copies between staging and the caller's buffer, where tests inject copy
// failures.
void copy_to_buffer(Stream &stream, void *dst, const void *staging, size_t n) {
    if (auto f = fault::at(fault::Site::copy))
        fail(f->err, "copy to the buffer (injected)");
    stream.to_buffer(dst, staging, n);
}

void copy_to_staging(Stream &stream, void *staging, const void *src, size_t n) {
    if (auto f = fault::at(fault::Site::copy))
        fail(f->err, "copy from the buffer (injected)");
    stream.to_staging(staging, src, n);
}

bool is_einval(const Error &e) {
    return e.err() == EINVAL;
}

// The file without O_DIRECT, for what an O_DIRECT fd refused with `e`; or
// e's error again, saying that the file cannot be opened without O_DIRECT.
int buffered_fd_after(File &file, const Error &e) {
    const int fd = file.fd_with(false);
    if (fd < 0)
        fail(e.err(), std::string(e.what()) + "; and the file cannot be opened without O_DIRECT: " +
                          file.why_no_twin(false));
    return fd;
}

// Reads [a, b) into staging so that staging offset == file offset mod 4 KiB;
// returns the bytes of [a, b) now in staging + (a mod 4 KiB). From an
// O_DIRECT fd, whole blocks around [a, b), so that no twin is needed.
size_t read_chunk(File &file, char *stg, uint64_t a, uint64_t b) {
    const uint64_t rs = align_down(a, kAlign);
    const size_t skew = a - rs;
    // The caller's fd where it is buffered or its O_DIRECT takes 4 KiB
    // blocks; else the file without O_DIRECT (run_request made sure of it).
    int fd = file.info().direct_in_4k() ? file.fd() : file.fd_with(false);
    if (file.info().direct_in_4k()) {
        try {
            const size_t got = pread_full(fd, stg, align_up(b, kAlign) - rs, rs);
            return std::min<size_t>(got > skew ? got - skew : 0, b - a);
        } catch (const Error &e) {
            if (!is_einval(e))
                throw;
            fd = buffered_fd_after(file, e);
        }
    }
    return pread_full(fd, stg + skew, b - a, a);
}

// Writes [a, b) from staging laid out as read_chunk() lays it out. On an
// O_DIRECT fd, unaligned edges go through the buffered twin, which
// run_request() (core/request.cpp) made sure of before writing anything.
void write_chunk(File &file, const char *stg, uint64_t a, uint64_t b) {
    const uint64_t base = align_down(a, kAlign);
    // The caller's fd where it is buffered or its O_DIRECT takes 4 KiB
    // blocks; else the file without O_DIRECT (run_request made sure of it).
    int fd = file.info().direct_in_4k() ? file.fd() : file.fd_with(false);
    if (file.info().direct_in_4k()) {
        // Whole blocks through the caller's fd, the edges through the twin.
        const uint64_t ma = std::min(align_up(a, kAlign), b);
        const uint64_t mb = std::max(align_down(b, kAlign), ma);
        try {
            if (ma < mb)
                pwrite_full(fd, stg + (ma - base), mb - ma, ma);
            if (a < ma)
                pwrite_full(file.fd_with(false), stg + (a - base), ma - a, a);
            if (mb < b)
                pwrite_full(file.fd_with(false), stg + (mb - base), b - mb, mb);
            return;
        } catch (const Error &e) {
            if (!is_einval(e))
                throw;
            fd = buffered_fd_after(file, e);
        }
    }
    pwrite_full(fd, stg + (a - base), b - a, a);
}

} // namespace

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

size_t CompatEngine::read(File &file, void *buf, MemKind kind, size_t n, uint64_t off) {
    const uint64_t end = off + n; // run_request stopped it at the end of the file
    if (n == 0)
        return 0;
    const Config cfg = config();
    // From storage (an O_DIRECT fd) the disk, not the copy engine, is the
    // limit, and it wants large reads: each participant reads a whole lane
    // (both staging buffers, 2 chunks) and copies it while the other
    // participants' reads are in flight. From the page cache, chunks are
    // double-buffered so that reads overlap copies.
    const bool from_storage = file.info().direct_in_4k();
    const ChunkPlan plan(off, end, from_storage ? 2 * cfg.chunk_bytes : cfg.chunk_bytes);
    Job job;
    char *dst = static_cast<char *>(buf);

    if (plan.nchunks == 1) {
        // One chunk: no parallelism to gain, so no workers, no hand-off and
        // one copy finished on the spot, all on the caller's thread.
        LaneLease lease(lanes_, lanes_.acquire(cfg.chunk_bytes, cfg.staging_bytes));
        char *stg = lease->staging(0);
        const size_t got = read_chunk(file, stg, off, end);
        if (got) {
            Stream &stream = kind == MemKind::host ? host_stream() : *lease->stream;
            copy_to_buffer(stream, dst, stg + (off % kAlign), got);
            stream.wait();
        }
        return got;
    }

    run(cfg, kMaxThreads, plan.nchunks, cfg.chunk_bytes, kind, [&](Lane &lane, Stream &stream) {
        int cur = 0;
        bool pending = false; // a copy out of the other staging buffer is in flight
        try {
            while (auto i = job.grab(plan.nchunks)) {
                const uint64_t a = plan.begin_of(*i), b = plan.end_of(*i);
                char *stg = lane.staging(cur);
                const size_t got = read_chunk(file, stg, a, b);
                if (got < b - a)
                    job.note_short(a + got);
                if (pending)
                    stream.wait();
                pending = false;
                if (got) {
                    copy_to_buffer(stream, dst + (a - off), stg + (a % kAlign), got);
                    pending = true;
                }
                if (!from_storage) {
                    cur ^= 1;
                } else if (pending) {
                    stream.wait(); // the next read reuses the whole lane
                    pending = false;
                }
            }
            if (pending)
                stream.wait();
        } catch (...) {
            fail_participant(job, stream, pending);
        }
    });
    job.rethrow();
    return static_cast<size_t>(std::min(job.short_at(), end) - off);
}

void CompatEngine::write(File &file, const void *buf, MemKind kind, size_t n, uint64_t off) {
    if (n == 0)
        return;
    const FileInfo &fi = file.info();
    const Config cfg = config();
    const ChunkPlan plan(off, off + n, cfg.chunk_bytes);
    Job job;
    const char *src = static_cast<const char *>(buf);

    if (plan.nchunks == 1) { // as in read(): on the caller's thread, one copy
        LaneLease lease(lanes_, lanes_.acquire(plan.chunk, cfg.staging_bytes));
        char *stg = lease->staging(0);
        Stream &stream = kind == MemKind::host ? host_stream() : *lease->stream;
        copy_to_staging(stream, stg + (off % kAlign), src, n);
        stream.wait();
        write_chunk(file, stg, off, off + n);
        return;
    }

    const unsigned max_width = fi.direct ? kMaxThreads : kBufferedWriteWidth;
    run(cfg, max_width, plan.nchunks, plan.chunk, kind, [&](Lane &lane, Stream &stream) {
        // Copy chunk j out of the device while chunk i is written to the file.
        auto fetch = [&](size_t i, int slot) {
            const uint64_t a = plan.begin_of(i), b = plan.end_of(i);
            char *stg = lane.staging(slot);
            copy_to_staging(stream, stg + (a % kAlign), src + (a - off), b - a);
        };
        bool pending = false;
        try {
            auto i = job.grab(plan.nchunks);
            if (!i)
                return;
            int cur = 0;
            fetch(*i, cur);
            pending = true;
            while (i) {
                stream.wait();
                pending = false;
                auto j = job.grab(plan.nchunks);
                if (j) {
                    fetch(*j, cur ^ 1);
                    pending = true;
                }
                write_chunk(file, lane.staging(cur), plan.begin_of(*i), plan.end_of(*i));
                i = j;
                cur ^= 1;
            }
        } catch (...) {
            fail_participant(job, stream, pending);
        }
    });
    job.rethrow();
}

namespace {

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
