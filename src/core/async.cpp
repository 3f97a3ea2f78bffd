#include "core/async.hpp"

#include "core/batch.hpp"
#include "core/error.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <new>

namespace phxfs::core {

bool AsyncOp::done() const {
    std::lock_guard lock(m_);
    return done_;
}

bool AsyncOp::wait_for(int64_t timeout_ns) const {
    std::unique_lock lock(m_);
    if (timeout_ns < 0)
        cv_.wait(lock, [this] { return done_; });
    else
        cv_.wait_for(lock, std::chrono::nanoseconds(timeout_ns), [this] { return done_; });
    return done_;
}

void AsyncOp::finish(ssize_t result, int err, std::string message) {
    {
        std::lock_guard lock(m_);
        result_ = result;
        err_ = err;
        message_ = std::move(message);
        done_ = true;
    }
    cv_.notify_all();
}

namespace {

// Futures are requests of one process-wide batch whose completions finish
// them: they share its executor, and with it the grouped path of small
// requests. A future's batch request holds a reference to its AsyncOp
// (self_) until it completes.
constexpr unsigned kFuturesInFlight = Batch::kMaxDepth;

void complete(void *user_data, int64_t result, int err, const std::string &message) {
    AsyncOp *op = static_cast<AsyncOp *>(user_data);
    std::shared_ptr<AsyncOp> keep = std::move(op->self_);
    keep->finish(static_cast<ssize_t>(result), err, message);
}

std::atomic<Batch *> futures_batch{nullptr};
std::mutex futures_mutex;

Batch &futures() {
    if (Batch *b = futures_batch.load(std::memory_order_acquire))
        return *b;
    std::lock_guard lock(futures_mutex);
    if (!futures_batch.load())
        futures_batch = new Batch(kFuturesInFlight, complete); // lives as long as the process
    return *futures_batch.load();
}

} // namespace

std::shared_ptr<AsyncOp> submit_async(uintptr_t handle, bool write, const void *buf, size_t n,
                                      uint64_t off) {
    handles().use(handle); // EBADF now for a handle that is not open
    auto op = std::make_shared<AsyncOp>();
    op->self_ = op;
    const phxfs_io io{reinterpret_cast<phxfs_file_t>(handle),
                      write ? PHXFS_OP_WRITE : PHXFS_OP_READ,
                      0,
                      const_cast<void *>(buf),
                      0,
                      n,
                      off,
                      op.get()};
    try {
        futures().submit(&io, 1);
    } catch (const Error &e) {
        op->self_.reset();
        if (e.err() == EAGAIN)
            fail(EAGAIN, std::to_string(kFuturesInFlight) +
                             " futures are in flight: wait for some before starting more");
        throw;
    }
    return op;
}

void futures_after_fork_child() {
    futures_batch = nullptr; // the parent's executor is not here; a new batch when needed
    new (&futures_mutex) std::mutex;
}

} // namespace phxfs::core
