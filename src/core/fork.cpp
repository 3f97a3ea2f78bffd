#include "core/fork.hpp"

#include "core/async.hpp"
#include "core/config.hpp"
#include "core/device.hpp"
#include "core/handle.hpp"
#include "core/stream_io.hpp"
#include "core/trace.hpp"
#include "engine/uring.hpp"
#include "engine/workers.hpp"
#include "memory/memory.hpp"

#include <pthread.h>

#include <mutex>

namespace phxfs::core {

namespace {

// Runs in the child, on the thread that called fork(), before fork returns.
// glibc has made malloc usable again by then.
void child_after_fork() {
    workers_after_fork_child();
    uring::after_fork_child();
    config_after_fork_child();
    trace::after_fork_child();
    cuda_after_fork_child();
    devices_after_fork_child();
    handles_after_fork_child();
    futures_after_fork_child();
    stream_io_after_fork_child();
}

} // namespace

void install_fork_handler() {
    static std::once_flag once;
    std::call_once(once, [] { ::pthread_atfork(nullptr, nullptr, child_after_fork); });
}

} // namespace phxfs::core
