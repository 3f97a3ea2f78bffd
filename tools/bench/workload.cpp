// workload.cpp - one timed run of phxfs-bench over a data file: each thread
// owns a buffer and a region of the file (or random request-aligned offsets)
// and times every request.
#include "workload.hpp"

#include "batch_io.hpp"
#include "cufile_api.hpp"
#include "datafile.hpp"
#include "memory.hpp"
#include "pattern.hpp"

#include <phxfs/phxfs.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <thread>

namespace phxbench {

namespace {

// What every worker shares.
struct Shared : RunControl {
    const Options &o;
    uint64_t io_size, file_size;
    int fd;
    phxcufile::CUfileHandle_t cufile = nullptr; // -x cufile: the file's handle

    Shared(const Options &opt, uint64_t io, uint64_t fs, int f)
        : RunControl(opt.threads), o(opt), io_size(io), file_size(fs), fd(f) {}
};

// The requests of one thread: its region in order, wrapping around, or
// random request-aligned offsets over the whole file.
class Requests {
  public:
    Requests(const Shared &s, unsigned t)
        : io_(s.io_size), file_(s.file_size), random_(is_random(s.o.io)), rng_(0x5eed + t) {
        const unsigned n = s.o.threads;
        const uint64_t share = s.file_size / n / 4096 * 4096;
        begin_ = share * t;
        end_ = t + 1 == n ? s.file_size : begin_ + share;
        cursor_ = begin_;
        if (s.o.total_bytes)
            budget_ = *s.o.total_bytes / n + (t == 0 ? *s.o.total_bytes % n : 0);
        else if (!s.o.duration_s)
            budget_ = end_ - begin_; // one pass: the region, or as many random bytes
        blocks_ = std::max<uint64_t>(1, file_ / io_);
    }
    // Next (offset, length), or false when the thread is done.
    bool next(uint64_t &off, uint64_t &len) {
        if (budget_ && moved_ >= *budget_)
            return false;
        if (random_) {
            off = std::uniform_int_distribution<uint64_t>(0, blocks_ - 1)(rng_) * io_;
            len = std::min(io_, file_ - off);
        } else {
            if (end_ == begin_)
                return false;
            off = cursor_;
            len = std::min(io_, end_ - cursor_);
            cursor_ = cursor_ + len >= end_ ? begin_ : cursor_ + len;
        }
        if (budget_)
            len = std::min(len, *budget_ - moved_);
        moved_ += len;
        return len > 0;
    }

  private:
    uint64_t io_, file_;
    bool random_;
    std::mt19937_64 rng_;
    uint64_t begin_ = 0, end_ = 0, cursor_ = 0, blocks_ = 1, moved_ = 0;
    std::optional<uint64_t> budget_;
};

// A request's bytes against the pattern (reads with --verify).
void check_read(Shared &s, const IoBuffer &buf, HostBuffer &scratch, uint64_t at, uint64_t len,
                uint64_t off) {
    const uint8_t *host = static_cast<const uint8_t *>(buf.data()) + at;
    if (buf.on_gpu()) {
        buf.to_host(scratch.get(), at, len);
        host = scratch.get();
    }
    if (const size_t mm = first_mismatch(host, len, off); mm < len) {
        char d[160];
        std::snprintf(d, sizeof d, "request at %llu (+%zu): got 0x%02x, the pattern has 0x%02x",
                      static_cast<unsigned long long>(off), mm, host[mm], pattern_byte(off + mm));
        s.mismatch_at(off + mm, d);
    }
}

// --batch N and --qd N: many requests of one thread in flight at once, each
// in its own io_size part of the buffer; a request's latency runs from its
// submission to the moment the thread sees it complete.
void queued_worker(Shared &s, unsigned t, ThreadResult &r, IoBuffer &buf, HostBuffer &scratch) {
    const Options &o = s.o;
    const bool write = is_write(o.io);
    const unsigned depth = std::max(o.batch, o.qd);
    Requests req(s, t);
    const bool cufile = o.path == PathType::cufile;
    struct InFlight {
        uint64_t off = 0, len = 0;
        Clock::time_point t0;
    };
    std::vector<InFlight> slot(depth);
    auto done = [&](unsigned k, int64_t result, const char *error) {
        const InFlight &f = slot[k];
        if (result != static_cast<int64_t>(f.len))
            throw std::runtime_error(std::string(write ? "write" : "read") + " of " +
                                     std::to_string(f.len) + " bytes at " + std::to_string(f.off) +
                                     ": " + (result < 0 ? error : "short"));
        const auto ns = static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - f.t0).count());
        r.latency_ns.push_back(ns);
        r.io_ns += ns;
        r.bytes += f.len;
        s.progress.fetch_add(f.len, std::memory_order_relaxed);
        if (!write && o.verify)
            check_read(s, buf, scratch, uint64_t{k} * s.io_size, f.len, f.off);
    };
    // --verify writes: the bytes a request must write, put in place untimed.
    auto fill = [&](unsigned k) {
        if (!write || !o.verify)
            return;
        fill_pattern(scratch.get(), slot[k].len, slot[k].off);
        buf.from_host(scratch.get(), uint64_t{k} * s.io_size, slot[k].len);
        r.written.emplace_back(slot[k].off, slot[k].len);
    };
    if (o.batch) {
        // A phxfs batch, or cuFile's batch API (-x cufile): the same requests,
        // submitted together and waited for.
        const int fds[] = {s.fd};
        const phxcufile::CUfileHandle_t cf_handles[] = {s.cufile};
        BatchIo bio(o.device, buf.data(), fds, write, depth,
                    cufile ? std::span(cf_handles) : std::span<const phxcufile::CUfileHandle_t>{});
        std::vector<Piece> pieces(depth);
        while (!s.stop && !s.past_deadline()) {
            unsigned n = 0;
            for (; n < depth && req.next(slot[n].off, slot[n].len); ++n)
                pieces[n] = {0, slot[n].off, uint64_t{n} * s.io_size, slot[n].len};
            if (n == 0)
                break;
            for (unsigned k = 0; k < n; ++k)
                fill(k);
            const auto t0 = Clock::now();
            for (unsigned k = 0; k < n; ++k)
                slot[k].t0 = t0;
            bio.run(std::span(pieces).first(n), [&](size_t k, int64_t result, const char *error) {
                done(static_cast<unsigned>(k), result, error);
            });
        }
        return;
    }
    phxfs::Device dev(o.device);
    phxfs::File file(s.fd, dev);
    // --qd: a ring of futures, the oldest waited for first.
    std::vector<phxfs::Future> fs(depth);
    unsigned head = 0, inflight = 0;
    bool more = true;
    while (!s.stop && (inflight || more)) {
        while (more && inflight < depth && !s.past_deadline()) {
            const unsigned k = (head + inflight) % depth;
            if (!(more = req.next(slot[k].off, slot[k].len)))
                break;
            fill(k);
            slot[k].t0 = Clock::now();
            char *p = static_cast<char *>(buf.data()) + uint64_t{k} * s.io_size;
            fs[k] = write ? file.pwrite(p, slot[k].len, static_cast<off_t>(slot[k].off))
                          : file.pread(p, slot[k].len, static_cast<off_t>(slot[k].off));
            ++inflight;
        }
        if (!inflight)
            break;
        int64_t result = -1;
        std::string error;
        try {
            result = static_cast<int64_t>(fs[head].get());
        } catch (const phxfs::Error &e) {
            error = e.what();
        }
        done(head, result, error.c_str());
        head = (head + 1) % depth;
        --inflight;
        if (s.past_deadline())
            more = false;
    }
}

void worker(Shared &s, unsigned t, ThreadResult &r) {
    const Options &o = s.o;
    const bool write = is_write(o.io);
    const bool naive = o.path == PathType::naive;
    const bool cufile = o.path == PathType::cufile;
    std::optional<IoBuffer> buf;
    HostBuffer scratch; // pattern fills, verification, the naive path's bounce buffer
    phxtools::CudaBuffer pinned_bounce; // naive --bounce pinned
    void *bounce = nullptr;             // where the naive path reads to / writes from
    const phxcufile::Api *cf = cufile ? phxcufile::api() : nullptr;
    bool cf_registered = false;
    try {
        buf.emplace(o.device, o.mem, s.io_size * std::max({o.batch, o.qd, 1u}), !naive && !cufile);
        if (!buf->why_unregistered().empty() && t == 0)
            s.set_note("buffers not registered: " + buf->why_unregistered());
        if (o.verify || naive || buf->on_gpu())
            scratch = alloc_host(s.io_size);
        if (naive) {
            bounce = buf->on_gpu() ? scratch.get() : buf->data(); // host buffers: read into them
            if (buf->on_gpu() && o.bounce_pinned) {
                phxtools::Cuda *c = phxtools::Cuda::get(o.device);
                if (!c)
                    throw std::runtime_error("--bounce pinned: " +
                                             phxtools::Cuda::why_unavailable());
                pinned_bounce = phxtools::cuda_alloc_pinned(*c, s.io_size);
                bounce = pinned_bounce.get();
            }
        }
        if (cf && buf->on_gpu()) {
            phxcufile::buf_register(*cf, buf->data(), buf->size());
            cf_registered = true;
        }
        if (write && !o.verify) { // some content; --verify writes the pattern per request
            fill_pattern(scratch ? scratch.get() : buf->data(), s.io_size, 0);
            if (scratch)
                buf->from_host(scratch.get(), 0, s.io_size);
        }
    } catch (const std::exception &e) {
        s.fail(e.what());
    }
    const phxcufile::BufDeregister cf_dereg{cf, cf_registered ? buf->data() : nullptr};
    s.ready.count_down();
    s.start.wait();
    if (s.stop)
        return;

    if (o.batch || o.qd) {
        try {
            queued_worker(s, t, r, *buf, scratch);
        } catch (const std::exception &e) {
            s.fail(e.what());
        }
        return;
    }
    Requests req(s, t);
    const phxfs_fileid_t fid{s.fd, o.device};
    uint64_t off = 0, len = 0;
    try {
        while (!s.stop && req.next(off, len)) {
            if (write && o.verify) { // not timed: the bytes this request must write
                fill_pattern(scratch.get(), len, off);
                buf->from_host(scratch.get(), 0, len);
            }
            const auto t0 = Clock::now();
            if (naive && write) {
                if (bounce != buf->data())
                    buf->to_host(bounce, 0, len);
                pwrite_all(s.fd, bounce, len, off);
            } else if (naive) {
                if (pread_all(s.fd, bounce, len, off) != len)
                    throw std::runtime_error("short pread at " + std::to_string(off));
                if (bounce != buf->data())
                    buf->from_host(bounce, 0, len);
            } else if (cufile) {
                const ssize_t n =
                    write ? cf->cuFileWrite(s.cufile, buf->data(), len, static_cast<off_t>(off), 0)
                          : cf->cuFileRead(s.cufile, buf->data(), len, static_cast<off_t>(off), 0);
                if (n < 0)
                    throw std::runtime_error(
                        std::string(write ? "cuFileWrite" : "cuFileRead") + " of " +
                        std::to_string(len) + " bytes at " + std::to_string(off) + " failed: " +
                        (n == -1 ? std::string(std::strerror(errno))
                                 : phxcufile::error_text({static_cast<int>(-n), 0})));
                if (static_cast<uint64_t>(n) != len)
                    throw std::runtime_error("short " + std::string(write ? "write" : "read") +
                                             " at " + std::to_string(off) + ": " +
                                             std::to_string(n) + " of " + std::to_string(len));
            } else {
                const ssize_t n = write ? phxfs_write(fid, buf->data(), 0, len, off)
                                        : phxfs_read(fid, buf->data(), 0, len, off);
                if (n < 0)
                    throw std::runtime_error(std::string(write ? "phxfs_write" : "phxfs_read") +
                                             " of " + std::to_string(len) + " bytes at " +
                                             std::to_string(off) + " failed (" +
                                             std::strerror(errno) + "): " + phxfs_last_error());
                if (static_cast<uint64_t>(n) != len)
                    throw std::runtime_error("short " + std::string(write ? "write" : "read") +
                                             " at " + std::to_string(off) + ": " +
                                             std::to_string(n) + " of " + std::to_string(len));
            }
            const auto t1 = Clock::now();
            const auto ns = static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
            r.latency_ns.push_back(ns);
            r.io_ns += ns;
            r.bytes += len;
            s.progress.fetch_add(len, std::memory_order_relaxed);
            if (write && o.verify)
                r.written.emplace_back(off, len);
            if (!write && o.verify) // every byte moved, against the pattern
                check_read(s, *buf, scratch, 0, len, off);
            if (s.deadline != Clock::time_point::max() && t1 >= s.deadline)
                break;
        }
    } catch (const std::exception &e) {
        s.fail(e.what());
    }
}

// After a verified write run: the bytes written must hold the pattern; the
// rest (zeroed before the run) gets the pattern back.
void verify_written(const std::string &path, RunResult &res) {
    std::map<uint64_t, uint64_t> covered; // merged [start, end)
    for (const ThreadResult &t : res.threads)
        for (auto [off, len] : t.written) {
            uint64_t b = off, e = off + len;
            auto it = covered.upper_bound(b);
            if (it != covered.begin() && std::prev(it)->second >= b)
                --it;
            while (it != covered.end() && it->first <= e) {
                b = std::min(b, it->first);
                e = std::max(e, it->second);
                it = covered.erase(it);
            }
            covered.emplace(b, e);
        }
    Fd fd = open_or_throw(path, O_RDWR);
    uint64_t pos = 0;
    for (auto [b, e] : covered) {
        if (pos < b)
            write_pattern(fd.get(), pos, b);
        if (auto mm = check_pattern(fd.get(), b, e)) {
            res.mismatch = mm;
            res.mismatch_detail = "re-read with pread after the write run";
            write_pattern(fd.get(), b, res.file_size); // leave a usable file behind
            return;
        }
        pos = e;
    }
    if (pos < res.file_size)
        write_pattern(fd.get(), pos, res.file_size);
}

} // namespace

RunResult run_workload(const Options &o, uint64_t io_size, uint64_t file_size) {
    RunResult res;
    res.io_size = io_size = std::min(io_size, file_size);
    res.file_size = file_size;
    const bool write = is_write(o.io);
    if (o.total_bytes)
        res.planned_bytes = *o.total_bytes;
    else if (!o.duration_s)
        res.planned_bytes = file_size;

    phxfs::Device dev(o.device); // phxfs_open for the run
    ModeGuard mode(o.path);
    {
        Fd prep = open_or_throw(o.file, write ? O_RDWR : O_RDONLY);
        if (write && o.verify)
            zero_range(prep.get(), file_size);
        if (o.cold) {
            ::fdatasync(prep.get());
            ::posix_fadvise(prep.get(), 0, 0, POSIX_FADV_DONTNEED);
        }
    }
    int flags = write ? O_RDWR : O_RDONLY;
    if (o.cold)
        flags |= O_DIRECT;
    Fd fd(::open(o.file.c_str(), flags | O_CLOEXEC));
    if (fd.get() < 0)
        throw std::runtime_error(
            errno_msg("open " + o.file + (o.cold ? " with O_DIRECT (--cold)" : "")));

    Shared s(o, io_size, file_size, fd.get());
    phxcufile::FileHandle cf_handle;
    if (o.path == PathType::cufile)
        s.cufile = cf_handle.open(fd.get());
    if (file_size / o.threads < 4096 && o.threads > 1 && !is_random(o.io))
        throw std::runtime_error("file too small for " + std::to_string(o.threads) +
                                 " threads (each needs a region of at least 4 KiB)");
    run_threads(o, s, res, [&s](unsigned t, ThreadResult &r) { worker(s, t, r); });
    if (write && o.verify && !res.error.empty()) {
        Fd restore = open_or_throw(o.file, O_WRONLY); // the run zeroed the file: undo that
        write_pattern(restore.get(), 0, file_size);
    }
    if (o.verify && res.error.empty()) {
        if (write && !res.mismatch)
            verify_written(o.file, res);
        res.verified = !res.mismatch;
    }
    return res;
}

} // namespace phxbench
