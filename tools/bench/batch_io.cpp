// batch_io.cpp - transfers through a libphxfs batch or cuFile's batch API.
#include "batch_io.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace phxbench {

namespace {
void *cookie(size_t i) {
    return reinterpret_cast<void *>(static_cast<uintptr_t>(i));
}
size_t index_of(void *cookie) {
    return static_cast<size_t>(reinterpret_cast<uintptr_t>(cookie));
}
} // namespace

BatchIo::BatchIo(int device, void *buf, std::span<const int> fds, bool write, unsigned depth,
                 std::span<const phxcufile::CUfileHandle_t> cf_handles)
    : buf_(buf), write_(write), depth_(std::max(depth, 1u)) {
    if (cf_handles.empty()) {
        dev_.emplace(device);
        files_.reserve(fds.size());
        for (int fd : fds)
            files_.emplace_back(fd, *dev_);
        batch_.emplace(depth_);
        ios_.resize(depth_);
        cs_.resize(depth_);
        return;
    }
    if (cf_handles.size() != fds.size())
        throw std::logic_error("BatchIo: one cuFile handle per file");
    cf_ = phxcufile::api();
    if (!cf_ || !cf_->cuFileBatchIOSetUp || !cf_->cuFileBatchIOSubmit ||
        !cf_->cuFileBatchIOGetStatus || !cf_->cuFileBatchIODestroy)
        throw std::runtime_error("-x cufile --batch: no cuFile batch API (" +
                                 (cf_ ? cf_->library : phxcufile::why()) + ")");
    cf_files_.assign(cf_handles.begin(), cf_handles.end());
    for (unsigned left = depth_; left;) {
        const unsigned n = std::min(left, kCufileBatchMax);
        phxcufile::CUfileBatchHandle_t bh = nullptr;
        if (auto e = cf_->cuFileBatchIOSetUp(&bh, n); e.err != phxcufile::CU_FILE_SUCCESS)
            throw std::runtime_error("cuFileBatchIOSetUp(" + std::to_string(n) +
                                     "): " + phxcufile::error_text(e));
        cf_batches_.push_back(bh);
        left -= n;
    }
    cf_params_.resize(depth_);
    cf_events_.resize(std::min(depth_, kCufileBatchMax));
}

BatchIo::~BatchIo() {
    for (auto bh : cf_batches_)
        cf_->cuFileBatchIODestroy(bh);
}

void BatchIo::run(std::span<const Piece> pieces, const Done &done) {
    if (cf_)
        run_cufile(pieces, done);
    else
        run_phxfs(pieces, done);
}

// One phxfs batch: submit what fits, reap at least one, submit again.
void BatchIo::run_phxfs(std::span<const Piece> pieces, const Done &done) {
    size_t next = 0, finished = 0;
    unsigned inflight = 0;
    try {
        while (finished < pieces.size()) {
            unsigned k = 0;
            for (; next < pieces.size() && inflight + k < depth_; ++k, ++next) {
                const Piece &p = pieces[next];
                ios_[k] = {files_[p.file].handle(),
                           write_ ? PHXFS_OP_WRITE : PHXFS_OP_READ,
                           0,
                           buf_,
                           p.buf_off,
                           p.len,
                           p.file_off,
                           cookie(next)};
            }
            if (k) {
                batch_->submit(ios_.data(), k);
                inflight += k;
            }
            const unsigned m = batch_->reap(cs_.data(), 1, inflight);
            inflight -= m;
            finished += m;
            for (unsigned j = 0; j < m; ++j)
                done(index_of(cs_[j].user_data), cs_[j].result, cs_[j].error);
        }
    } catch (...) {
        // Leave the batch empty for the next run (or the destructor).
        for (; inflight; inflight -= batch_->reap(cs_.data(), 1, inflight)) {
        }
        throw;
    }
}

// cuFile: batch handles of at most 128 entries, each filled, submitted and
// waited for whole in turn, the others staying in flight meanwhile.
void BatchIo::run_cufile(std::span<const Piece> pieces, const Done &done) {
    const size_t nb = cf_batches_.size();
    std::vector<unsigned> outstanding(nb, 0);
    size_t next = 0, inflight = 0;
    auto submit = [&](size_t h) {
        phxcufile::CUfileIOParams_t *ps = cf_params_.data() + h * kCufileBatchMax;
        const unsigned cap = std::min<unsigned>(kCufileBatchMax, depth_ - h * kCufileBatchMax);
        unsigned k = 0;
        for (; k < cap && next < pieces.size(); ++k, ++next) {
            const Piece &pc = pieces[next];
            phxcufile::CUfileIOParams_t &p = ps[k];
            p = {};
            p.mode = phxcufile::CUFILE_BATCH;
            p.u.batch.devPtr_base = buf_;
            p.u.batch.file_offset = static_cast<off_t>(pc.file_off);
            p.u.batch.devPtr_offset = static_cast<off_t>(pc.buf_off);
            p.u.batch.size = pc.len;
            p.fh = cf_files_[pc.file];
            p.opcode = write_ ? phxcufile::CUFILE_WRITE : phxcufile::CUFILE_READ;
            p.cookie = cookie(next);
        }
        if (!k)
            return;
        if (auto e = cf_->cuFileBatchIOSubmit(cf_batches_[h], k, ps, 0);
            e.err != phxcufile::CU_FILE_SUCCESS)
            throw std::runtime_error("cuFileBatchIOSubmit: " + phxcufile::error_text(e));
        outstanding[h] = k;
        inflight += k;
    };
    // Waits for every entry of handle h; with report false, only drains.
    auto wait = [&](size_t h, bool report) {
        while (outstanding[h]) {
            unsigned m = outstanding[h];
            if (auto e =
                    cf_->cuFileBatchIOGetStatus(cf_batches_[h], 1, &m, cf_events_.data(), nullptr);
                e.err != phxcufile::CU_FILE_SUCCESS)
                throw std::runtime_error("cuFileBatchIOGetStatus: " + phxcufile::error_text(e));
            outstanding[h] -= m;
            inflight -= m;
            for (unsigned j = 0; report && j < m; ++j) {
                const phxcufile::CUfileIOEvents_t &ev = cf_events_[j];
                const bool ok = ev.status == phxcufile::CUFILE_COMPLETE;
                const std::string why = ok ? "" : "cuFile status " + std::to_string(ev.status);
                done(index_of(ev.cookie), ok ? static_cast<int64_t>(ev.ret) : -1, why.c_str());
            }
        }
    };
    try {
        for (size_t h = 0; h < nb; ++h)
            submit(h);
        for (size_t h = 0; inflight; h = (h + 1) % nb) {
            wait(h, true);
            submit(h);
        }
    } catch (...) {
        for (size_t h = 0; h < nb; ++h) {
            try {
                wait(h, false);
            } catch (...) {
                outstanding[h] = 0; // cuFile cannot tell: give the handle up
            }
        }
        throw;
    }
}

} // namespace phxbench
