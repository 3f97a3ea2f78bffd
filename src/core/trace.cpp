#include "core/trace.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <new>

namespace phxfs::core::trace {

namespace {

// Where lines go: standard error, or the file PHXFS_TRACE names, opened by
// from_env() on the library's first use (never lazily in write(), where a
// fork could catch it half done).
std::atomic<int> destination{STDERR_FILENO};
// Whole lines, never interleaved. A child of fork() gets a new one: a parent
// thread may have held it, blocked in write(2).
std::mutex lines;

} // namespace

bool from_env() {
    const char *v = std::getenv("PHXFS_TRACE");
    if (!v || !*v || std::string(v) == "0")
        return false;
    if (std::string(v) != "1" && std::string(v) != "stderr") {
        const int fd = ::open(v, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0)
            destination = fd;
    }
    return true;
}

void write(const std::string &line) {
    const std::string out = "phxfs[" + std::to_string(::getpid()) + "]: " + line + "\n";
    std::lock_guard lock(lines);
    const int fd = destination.load();
    for (size_t done = 0; done < out.size();) {
        const ssize_t r = ::write(fd, out.data() + done, out.size() - done);
        if (r <= 0)
            return; // a trace must never fail the I/O it describes
        done += static_cast<size_t>(r);
    }
}

void after_fork_child() {
    new (&lines) std::mutex; // the old one is never unlocked: no thread owns it here
}

} // namespace phxfs::core::trace
