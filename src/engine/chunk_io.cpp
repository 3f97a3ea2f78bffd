#include "engine/chunk_io.hpp"

#include "core/config.hpp"
#include "core/error.hpp"

#include <algorithm>
#include <string>

namespace phxfs::core {

namespace {

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

} // namespace

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

} // namespace phxfs::core
