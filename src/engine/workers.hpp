// A process-wide pool of worker threads that join callers' requests.
#pragma once

#include <functional>

namespace phxfs::core {

// Runs body on up to `width` threads at once: the calling thread and up to
// width - 1 pool workers, and returns when every run of body has returned.
// body must be safe to run concurrently and return quickly when there is no
// work left (runs may start late, after the work is done). Exceptions thrown
// by body are the caller's to catch inside body.
void run_parallel(unsigned width, const std::function<void()> &body);

// In a child of fork(): a new, empty pool (see fork.cpp).
void workers_after_fork_child();

} // namespace phxfs::core
