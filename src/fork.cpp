#include "fork.hpp"

#include "config.hpp"
#include "device.hpp"
#include "memory.hpp"
#include "workers.hpp"

#include <pthread.h>

#include <mutex>

namespace phxfs::core {

namespace {

// Runs in the child, on the thread that called fork(), before fork returns.
// glibc has made malloc usable again by then.
void child_after_fork() {
    workers_after_fork_child();
    config_after_fork_child();
    cuda_after_fork_child();
    devices_after_fork_child();
}

} // namespace

void install_fork_handler() {
    static std::once_flag once;
    std::call_once(once, [] { ::pthread_atfork(nullptr, nullptr, child_after_fork); });
}

} // namespace phxfs::core
