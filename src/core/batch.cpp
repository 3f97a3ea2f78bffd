#include "core/batch.hpp"

#include "core/config.hpp"
#include "core/device.hpp"
#include "core/error.hpp"
#include "core/request.hpp"
#include "engine/workers.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>

namespace phxfs::core {

Batch::Batch(unsigned depth) : owner_(::getpid()), slots_(depth), pending_(depth), done_(depth) {
    if (depth == 0 || depth > kMaxDepth)
        fail(EINVAL,
             "batch depth " + std::to_string(depth) + " is not in 1.." + std::to_string(kMaxDepth));
    free_.reserve(depth);
    for (unsigned i = depth; i > 0; --i)
        free_.push_back(i - 1);
    thread_ = std::thread([this] { executor(); });
}

Batch::~Batch() {
    if (::getpid() != owner_) {
        thread_.detach(); // a child of fork(): the thread is the parent's
        return;
    }
    {
        std::lock_guard lock(m_);
        stopping_ = true;
    }
    cancel();
    work_cv_.notify_all();
    thread_.join();
}

void Batch::check_owner() const {
    if (::getpid() != owner_)
        fail(EBADF, "the batch was created before fork(): its requests run in the parent");
}

unsigned Batch::submit(const phxfs_io *ios, unsigned n) {
    check_owner();
    if (n == 0)
        return 0;
    if (!ios)
        fail(EINVAL, "ios is NULL");
    {
        std::lock_guard lock(m_);
        if (n > free_.size())
            fail(EAGAIN, std::to_string(n) + " requests, " + std::to_string(free_.size()) +
                             " free places in the batch (depth " + std::to_string(slots_.size()) +
                             "): reap completions first");
        for (unsigned i = 0; i < n; ++i) {
            const uint32_t s = free_.back();
            free_.pop_back();
            Slot &slot = slots_[s];
            slot.io = ios[i];
            slot.result = 0;
            slot.status = PHXFS_IO_DONE;
            slot.error[0] = '\0';
            pending_.push(s);
        }
    }
    work_cv_.notify_one();
    return n;
}

unsigned Batch::reap(phxfs_completion *out, unsigned min_nr, unsigned max_nr, int64_t timeout_ns) {
    check_owner();
    if (min_nr > max_nr || min_nr > slots_.size())
        fail(EINVAL, "min_nr " + std::to_string(min_nr) + " exceeds max_nr " +
                         std::to_string(max_nr) + " or the depth " + std::to_string(slots_.size()));
    if (max_nr > 0 && !out)
        fail(EINVAL, "out is NULL");
    std::unique_lock lock(m_);
    auto enough = [&] { return done_.size() >= min_nr; };
    if (timeout_ns < 0)
        done_cv_.wait(lock, enough);
    else if (timeout_ns > 0)
        done_cv_.wait_for(lock, std::chrono::nanoseconds(timeout_ns), enough);
    unsigned got = 0;
    while (got < max_nr && !done_.empty()) {
        const uint32_t s = done_.pop();
        Slot &slot = slots_[s];
        phxfs_completion &c = out[got++];
        c.user_data = slot.io.user_data;
        c.result = slot.result;
        c.status = slot.status;
        c.reserved = 0;
        std::memcpy(c.error, slot.error, sizeof c.error);
        free_.push_back(s);
    }
    return got;
}

unsigned Batch::cancel() {
    unsigned n = 0;
    {
        std::lock_guard lock(m_);
        for (; !pending_.empty(); ++n) {
            const uint32_t s = pending_.pop();
            slots_[s].result = -ECANCELED;
            slots_[s].status = PHXFS_IO_CANCELED;
            done_.push(s);
        }
    }
    if (n)
        done_cv_.notify_all();
    return n;
}

namespace {

// Runs one request on whichever thread takes it; its result, status and
// error go into the slot's fields.
void run_one(const phxfs_io &io, FileHandle::Use &handle, int64_t &result, uint32_t &status,
             char *error, size_t error_len) {
    try {
        if (io.op != PHXFS_OP_READ && io.op != PHXFS_OP_WRITE)
            fail(EINVAL, "op " + std::to_string(io.op) + " is neither read nor write");
        if (io.reserved)
            fail(EINVAL, "reserved is not 0");
        check_io_range(io.buf_offset, io.nbyte, io.f_offset);
        handle = handles().use(reinterpret_cast<uintptr_t>(io.fh));
        const char *buf = static_cast<const char *>(io.buf);
        if (buf && reinterpret_cast<uintptr_t>(buf) + io.buf_offset < io.buf_offset)
            fail(EINVAL, "buffer range overflows");
        const size_t got = device(handle->device_id())
                               .io(io.op == PHXFS_OP_WRITE, handle->file(), buf + io.buf_offset,
                                   io.nbyte, io.f_offset);
        result = static_cast<int64_t>(got);
        status = PHXFS_IO_DONE;
    } catch (...) {
        const Failure f = current_failure();
        result = -f.err;
        status = PHXFS_IO_FAILED;
        std::snprintf(error, error_len, "%s", f.message.c_str());
    }
}

} // namespace

// The executor wakes when requests are pending and runs them on up to
// `threads` participants (itself and pool workers). Each takes the oldest
// pending request, runs it and completes it, until none is pending: a slow
// request holds up no other, and what has not started stays cancelable.
void Batch::executor() {
    std::unique_lock lock(m_);
    for (;;) {
        work_cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
        if (pending_.empty())
            return; // stopping, nothing left
        const unsigned width = std::min(std::max(config().threads, 1u), pending_.size());
        lock.unlock();
        run_parallel(width, [this] { participate(); });
        lock.lock();
    }
}

void Batch::participate() {
    std::unique_lock lock(m_);
    while (!pending_.empty()) {
        const uint32_t s = pending_.pop();
        Slot &slot = slots_[s];
        lock.unlock();
        run_one(slot.io, slot.handle, slot.result, slot.status, slot.error, sizeof slot.error);
        lock.lock();
        slot.handle = FileHandle::Use(); // closing the handle waits no more for this one
        done_.push(s);
        done_cv_.notify_all();
    }
}

} // namespace phxfs::core
