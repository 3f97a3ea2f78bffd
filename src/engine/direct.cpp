#include "engine/direct.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "engine/fileio.hpp"
#include "engine/workers.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>

namespace phxfs::core {

namespace {

// Splits the request into chunks and runs op(chunk offset, length) on up to
// `threads` participants; returns the end of contiguous data (reads stop at
// the first short chunk).
template <typename Op>
uint64_t run_chunks(WorkerPool &workers, size_t n, uint64_t off, uint64_t unit, Op &&op) {
    const Config cfg = config();
    const uint64_t chunk = align_up(cfg.chunk_bytes, unit); // every piece whole units
    const size_t nchunks = (n + chunk - 1) / chunk;
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex m;
    std::exception_ptr error;
    uint64_t data_end = off + n;

    workers.run(static_cast<unsigned>(std::min<size_t>(cfg.threads, nchunks)), [&] {
        try {
            for (size_t i; !failed && (i = next++) < nchunks;) {
                const uint64_t a = i * chunk, len = std::min<uint64_t>(chunk, n - a);
                const uint64_t got = op(a, len);
                if (got < len) {
                    std::lock_guard lock(m);
                    data_end = std::min(data_end, off + a + got);
                }
            }
        } catch (...) {
            std::lock_guard lock(m);
            if (!error)
                error = std::current_exception();
            failed = true;
        }
    });
    if (error)
        std::rethrow_exception(error);
    return data_end;
}

} // namespace

size_t direct_read(WorkerPool &workers, int dfd, char *mapped, size_t n, uint64_t off,
                   uint64_t unit) {
    const uint64_t end = run_chunks(workers, n, off, unit, [&](uint64_t a, uint64_t len) {
        return pread_full(dfd, mapped + a, len, off + a);
    });
    return static_cast<size_t>(end - off);
}

void direct_write(WorkerPool &workers, int dfd, const char *mapped, size_t n, uint64_t off,
                  uint64_t unit) {
    run_chunks(workers, n, off, unit, [&](uint64_t a, uint64_t len) {
        pwrite_full(dfd, mapped + a, len, off + a);
        return len;
    });
}

} // namespace phxfs::core
