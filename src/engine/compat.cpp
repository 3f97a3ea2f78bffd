// The request pipeline: one large read or write cut into chunks, each lane
// reading or writing one chunk while its previous chunk's device copy runs.
#include "engine/compat.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "engine/chunk_io.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <optional>

namespace phxfs::core {

namespace {

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

} // namespace

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

} // namespace phxfs::core
