#include "core/async.hpp"

#include "core/config.hpp"
#include "core/device.hpp"
#include "core/error.hpp"
#include "engine/workers.hpp"

#include <chrono>

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

std::shared_ptr<AsyncOp> submit_async(FileHandle::Use handle, bool write, const void *buf, size_t n,
                                      uint64_t off) {
    auto op = std::make_shared<AsyncOp>();
    Device &dev = device(handle->device_id());
    // The job completes the future, then releases the handle: when
    // phxfs_file_close returns, every future of the handle is done.
    auto job = [op, h = std::make_shared<FileHandle::Use>(std::move(handle)), &dev, write, buf, n,
                off] {
        const FileHandle::Use held = std::move(*h);
        try {
            op->finish(static_cast<ssize_t>(dev.io(write, held->file(), buf, n, off)), 0, {});
        } catch (...) {
            Failure f = current_failure();
            op->finish(-1, f.err, std::move(f.message));
        }
    };
    run_async(std::move(job), config().threads);
    return op;
}

} // namespace phxfs::core
