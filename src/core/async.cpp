#include "core/async.hpp"

#include "core/batch.hpp"
#include "core/device.hpp"
#include "core/error.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <new>
#include <vector>

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

// Futures are requests of a batch per device whose completions finish
// them: they share its executor, and with it the grouped path of small
// requests. One executor per device, so that a long request on one device
// never holds up the futures of another (each device's requests still run
// in submission order). A future's batch request holds a reference to its
// AsyncOp (self_) until it completes.
constexpr unsigned kFuturesInFlight = Batch::kMaxDepth; // per device

void complete(void *user_data, int64_t result, int err, const std::string &message) {
    AsyncOp *op = static_cast<AsyncOp *>(user_data);
    std::shared_ptr<AsyncOp> keep = std::move(op->self_);
    keep->finish(static_cast<ssize_t>(result), err, message);
}

// The devices' futures batches, made when a device's first future comes
// (the device table's size is fixed once built).
struct FuturesTable {
    explicit FuturesTable(size_t n) : batch(n) {}
    std::vector<std::atomic<Batch *>> batch; // each lives as long as the process
};

std::atomic<FuturesTable *> futures_table{nullptr};
std::mutex futures_mutex;

Batch &futures(int device_id) {
    const auto i = static_cast<size_t>(device_id);
    if (FuturesTable *t = futures_table.load(std::memory_order_acquire))
        if (Batch *b = t->batch[i].load(std::memory_order_acquire))
            return *b;
    std::lock_guard lock(futures_mutex);
    FuturesTable *t = futures_table.load();
    if (!t) {
        t = new FuturesTable(devices().size());
        futures_table.store(t, std::memory_order_release);
    }
    Batch *b = t->batch[i].load();
    if (!b) {
        b = new Batch(kFuturesInFlight, complete);
        t->batch[i].store(b, std::memory_order_release);
    }
    return *b;
}

} // namespace

std::shared_ptr<AsyncOp> submit_async(uintptr_t handle, bool write, const void *buf, size_t n,
                                      uint64_t off) {
    const int device_id = handles().use(handle)->device_id(); // EBADF now if not open
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
        futures(device_id).submit(&io, 1);
    } catch (const Error &e) {
        op->self_.reset();
        if (e.err() == EAGAIN)
            fail(EAGAIN, std::to_string(kFuturesInFlight) + " futures are in flight on device " +
                             std::to_string(device_id) + ": wait for some before starting more");
        throw;
    }
    return op;
}

void futures_after_fork_child() {
    futures_table = nullptr; // the parent's executors are not here; new batches when needed
    new (&futures_mutex) std::mutex;
}

} // namespace phxfs::core
