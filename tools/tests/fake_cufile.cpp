// fake_cufile.cpp - a stand-in libcufile for phxfs-bench's tests on
// machines without cuFile (PHXFS_CUFILE_LIB names it): the calls the tools
// make, on host memory, through pread and pwrite. A batch handle holds at
// most 128 entries, as cuFile's do by default, and refuses more; its entries
// complete when submitted and are handed out by cuFileBatchIOGetStatus.
#include "../bench/cufile_api.hpp"

#include <unistd.h>

#include <deque>
#include <mutex>

using namespace phxcufile;

namespace {

constexpr CUfileError_t kOk{CU_FILE_SUCCESS, 0};
constexpr CUfileError_t kInvalid{5022, 0}; // an invalid-value error of cuFile's range
constexpr int kFailed = 0x20;              // CUFILE_FAILED
constexpr unsigned kMaxEntries = 128;

struct Batch {
    explicit Batch(unsigned m) : max(m) {}
    unsigned max;
    unsigned in_flight = 0; // submitted, not yet taken by GetStatus
    std::deque<CUfileIOEvents_t> done;
    std::mutex m;
};

ssize_t transfer(CUfileHandle_t fh, bool write, void *base, size_t n, off_t file_off,
                 off_t buf_off) {
    const int fd = *static_cast<int *>(fh);
    char *p = static_cast<char *>(base) + buf_off;
    size_t moved = 0;
    while (moved < n) {
        const ssize_t r = write ? ::pwrite(fd, p + moved, n - moved, file_off + moved)
                                : ::pread(fd, p + moved, n - moved, file_off + moved);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        moved += static_cast<size_t>(r);
    }
    return static_cast<ssize_t>(moved);
}

} // namespace

extern "C" {

CUfileError_t cuFileDriverOpen() {
    return kOk;
}
CUfileError_t cuFileDriverClose() {
    return kOk;
}
CUfileError_t cuFileHandleRegister(CUfileHandle_t *fh, CUfileDescr_t *d) {
    if (!fh || !d || d->type != CU_FILE_HANDLE_TYPE_OPAQUE_FD || d->handle.fd < 0)
        return kInvalid;
    *fh = new int(d->handle.fd);
    return kOk;
}
void cuFileHandleDeregister(CUfileHandle_t fh) {
    delete static_cast<int *>(fh);
}
CUfileError_t cuFileBufRegister(const void *, size_t, int) {
    return kOk;
}
CUfileError_t cuFileBufDeregister(const void *) {
    return kOk;
}
ssize_t cuFileRead(CUfileHandle_t fh, void *buf, size_t n, off_t file_off, off_t buf_off) {
    return transfer(fh, false, buf, n, file_off, buf_off);
}
ssize_t cuFileWrite(CUfileHandle_t fh, const void *buf, size_t n, off_t file_off, off_t buf_off) {
    return transfer(fh, true, const_cast<void *>(buf), n, file_off, buf_off);
}

CUfileError_t cuFileBatchIOSetUp(CUfileBatchHandle_t *bh, unsigned max) {
    if (!bh || max == 0 || max > kMaxEntries)
        return kInvalid;
    *bh = new Batch(max);
    return kOk;
}
CUfileError_t cuFileBatchIOSubmit(CUfileBatchHandle_t bh, unsigned n, CUfileIOParams_t *ps,
                                  unsigned) {
    auto *b = static_cast<Batch *>(bh);
    std::lock_guard lock(b->m);
    if (n == 0 || b->in_flight + n > b->max)
        return kInvalid;
    for (unsigned i = 0; i < n; ++i) {
        const CUfileIOParams_t &p = ps[i];
        const ssize_t r =
            p.mode != CUFILE_BATCH
                ? -1
                : transfer(p.fh, p.opcode == CUFILE_WRITE, p.u.batch.devPtr_base, p.u.batch.size,
                           p.u.batch.file_offset, p.u.batch.devPtr_offset);
        b->done.push_back({p.cookie, r < 0 ? kFailed : CUFILE_COMPLETE, static_cast<size_t>(r)});
    }
    b->in_flight += n;
    return kOk;
}
CUfileError_t cuFileBatchIOGetStatus(CUfileBatchHandle_t bh, unsigned min_nr, unsigned *nr,
                                     CUfileIOEvents_t *evs, struct timespec *) {
    auto *b = static_cast<Batch *>(bh);
    std::lock_guard lock(b->m);
    if (!nr || min_nr > *nr || min_nr > b->in_flight)
        return kInvalid; // would wait for ever
    unsigned k = 0;
    for (; k < *nr && !b->done.empty(); ++k) {
        evs[k] = b->done.front();
        b->done.pop_front();
    }
    b->in_flight -= k;
    *nr = k;
    return kOk;
}
void cuFileBatchIODestroy(CUfileBatchHandle_t bh) {
    delete static_cast<Batch *>(bh);
}

} // extern "C"
