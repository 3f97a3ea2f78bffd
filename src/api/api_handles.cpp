// The public C API of file handles, futures, batches and stream-ordered
// I/O (phxfs.h, 0.2): argument checks, then core/handle, core/async,
// core/batch and core/stream_io.
#include "core/async.hpp"
#include "core/batch.hpp"
#include "core/device.hpp"
#include "core/error.hpp"
#include "core/handle.hpp"
#include "core/request.hpp"
#include "core/stream_io.hpp"

#include <phxfs/phxfs.h>

#include <memory>

using namespace phxfs::core;

#define PHXFS_API extern "C" __attribute__((visibility("default")))

// What the opaque types are.
struct phxfs_future {
    std::shared_ptr<AsyncOp> op;
};
struct phxfs_batch {
    Batch batch;
    explicit phxfs_batch(unsigned depth) : batch(depth) {}
};

namespace {

uintptr_t key(phxfs_file_t fh) {
    return reinterpret_cast<uintptr_t>(fh);
}

// The buffer a request names, after its offset, checked as phxfs_read does.
const char *at(const void *buf, off_t buf_offset, size_t nbyte, off_t f_offset) {
    if (buf_offset < 0 || f_offset < 0)
        fail(EINVAL, "negative offset");
    check_io_range(static_cast<uint64_t>(buf_offset), nbyte, static_cast<uint64_t>(f_offset));
    return static_cast<const char *>(buf) + buf_offset;
}

ssize_t file_io(bool write, phxfs_file_t fh, const void *buf, off_t buf_offset, size_t nbyte,
                off_t f_offset) {
    const char *p = at(buf, buf_offset, nbyte, f_offset);
    FileHandle::Use h = handles().use(key(fh));
    return static_cast<ssize_t>(
        device(h->device_id()).io(write, h->file(), p, nbyte, static_cast<uint64_t>(f_offset)));
}

int file_io_async(bool write, phxfs_file_t fh, const void *buf, off_t buf_offset, size_t nbyte,
                  off_t f_offset, phxfs_future_t *future) {
    if (!future)
        fail(EINVAL, "future is NULL");
    const char *p = at(buf, buf_offset, nbyte, f_offset);
    auto f = std::make_unique<phxfs_future>();
    f->op = submit_async(key(fh), write, p, nbyte, static_cast<uint64_t>(f_offset));
    *future = f.release();
    return 0;
}

} // namespace

PHXFS_API int phxfs_file_open(phxfs_file_t *fh, int device_id, int fd) {
    return c_call([&] {
        if (!fh)
            fail(EINVAL, "fh is NULL");
        *fh = reinterpret_cast<phxfs_file_t>(handles().open(device_id, fd));
        return 0;
    });
}

PHXFS_API int phxfs_file_close(phxfs_file_t fh) {
    return c_call([&] {
        handles().close(key(fh));
        return 0;
    });
}

PHXFS_API ssize_t phxfs_file_read(phxfs_file_t fh, void *buf, off_t buf_offset, size_t nbyte,
                                  off_t f_offset) {
    return c_call([&] { return file_io(false, fh, buf, buf_offset, nbyte, f_offset); });
}

PHXFS_API ssize_t phxfs_file_write(phxfs_file_t fh, const void *buf, off_t buf_offset, size_t nbyte,
                                   off_t f_offset) {
    return c_call([&] { return file_io(true, fh, buf, buf_offset, nbyte, f_offset); });
}

PHXFS_API int phxfs_file_read_async(phxfs_file_t fh, void *buf, off_t buf_offset, size_t nbyte,
                                    off_t f_offset, phxfs_future_t *future) {
    return c_call(
        [&] { return file_io_async(false, fh, buf, buf_offset, nbyte, f_offset, future); });
}

PHXFS_API int phxfs_file_write_async(phxfs_file_t fh, const void *buf, off_t buf_offset,
                                     size_t nbyte, off_t f_offset, phxfs_future_t *future) {
    return c_call(
        [&] { return file_io_async(true, fh, buf, buf_offset, nbyte, f_offset, future); });
}

PHXFS_API int phxfs_future_poll(phxfs_future_t future) {
    return c_call([&] {
        if (!future)
            fail(EINVAL, "future is NULL");
        return future->op->done() ? 1 : 0;
    });
}

PHXFS_API ssize_t phxfs_future_wait(phxfs_future_t future, int64_t timeout_ns) {
    return c_call([&]() -> ssize_t {
        if (!future)
            fail(EINVAL, "future is NULL");
        const AsyncOp &op = *future->op;
        if (!op.wait_for(timeout_ns))
            fail(ETIMEDOUT, "the request is still running");
        if (op.result() < 0)
            fail(op.err(), op.message());
        return op.result();
    });
}

PHXFS_API void phxfs_future_free(phxfs_future_t future) {
    if (!future)
        return;
    future->op->wait_for(-1);
    delete future;
}

PHXFS_API int phxfs_batch_create(phxfs_batch_t *batch, unsigned depth) {
    return c_call([&] {
        if (!batch)
            fail(EINVAL, "batch is NULL");
        *batch = new phxfs_batch(depth);
        return 0;
    });
}

PHXFS_API int phxfs_batch_submit(phxfs_batch_t batch, const struct phxfs_io *ios, unsigned n) {
    return c_call([&] {
        if (!batch)
            fail(EINVAL, "batch is NULL");
        return static_cast<int>(batch->batch.submit(ios, n));
    });
}

PHXFS_API int phxfs_batch_reap(phxfs_batch_t batch, struct phxfs_completion *out, unsigned min_nr,
                               unsigned max_nr, int64_t timeout_ns) {
    return c_call([&] {
        if (!batch)
            fail(EINVAL, "batch is NULL");
        return static_cast<int>(batch->batch.reap(out, min_nr, max_nr, timeout_ns));
    });
}

PHXFS_API int phxfs_batch_cancel(phxfs_batch_t batch) {
    return c_call([&] {
        if (!batch)
            fail(EINVAL, "batch is NULL");
        return static_cast<int>(batch->batch.cancel());
    });
}

PHXFS_API int phxfs_batch_destroy(phxfs_batch_t batch) {
    return c_call([&] {
        if (!batch)
            fail(EINVAL, "batch is NULL");
        delete batch;
        return 0;
    });
}

PHXFS_API int phxfs_file_read_stream(phxfs_file_t fh, void *buf, const size_t *size_p,
                                     const off_t *f_offset_p, const off_t *buf_offset_p,
                                     ssize_t *bytes_read_p, void *stream) {
    return c_call([&] {
        cuda_stream_io().enqueue({key(fh), false, static_cast<char *>(buf), size_p, f_offset_p,
                                  buf_offset_p, bytes_read_p},
                                 stream);
        return 0;
    });
}

PHXFS_API int phxfs_file_write_stream(phxfs_file_t fh, const void *buf, const size_t *size_p,
                                      const off_t *f_offset_p, const off_t *buf_offset_p,
                                      ssize_t *bytes_written_p, void *stream) {
    return c_call([&] {
        cuda_stream_io().enqueue({key(fh), true, static_cast<char *>(const_cast<void *>(buf)),
                                  size_p, f_offset_p, buf_offset_p, bytes_written_p},
                                 stream);
        return 0;
    });
}

PHXFS_API int phxfs_stream_register(void *stream, unsigned flags) {
    return c_call([&] {
        if (flags)
            fail(EINVAL, "phxfs_stream_register: flags must be 0");
        cuda_stream_io().register_stream(stream);
        return 0;
    });
}
