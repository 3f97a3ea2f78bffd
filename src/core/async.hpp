// Futures: a read or write that returns at once and completes in the
// library's workers, as one synchronous call would have (same paths, same
// counters, same errors).
#pragma once

#include "core/handle.hpp"

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace phxfs::core {

class AsyncOp {
  public:
    // Whether the request has completed.
    bool done() const;
    // Waits until it has, or for timeout_ns (< 0: for ever); returns done().
    bool wait_for(int64_t timeout_ns) const;
    // Once done: the bytes moved, or -1 with err() and message() set.
    ssize_t result() const { return result_; }
    int err() const { return err_; }
    const std::string &message() const { return message_; }

    // Completes the request (the futures batch calls it).
    void finish(ssize_t result, int err, std::string message);
    // The request's own reference, while it runs.
    std::shared_ptr<AsyncOp> self_;

  private:
    mutable std::mutex m_;
    mutable std::condition_variable cv_;
    bool done_ = false;
    ssize_t result_ = -1;
    int err_ = 0;
    std::string message_;
};

// Starts a read (write = false) or write of n bytes between buf and the
// file of handle (a HandleTable key) at off. Throws EBADF for a handle that
// is not open, EAGAIN when Batch::kMaxDepth futures are in flight on the
// handle's device (each device has a futures batch, and executor, of its own).
std::shared_ptr<AsyncOp> submit_async(uintptr_t handle, bool write, const void *buf, size_t n,
                                      uint64_t off);

// In a child of fork(): futures start batches of their own.
void futures_after_fork_child();

} // namespace phxfs::core
