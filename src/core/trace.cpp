#include "core/trace.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

namespace phxfs::core::trace {

namespace {

const char *env_value() {
    const char *v = std::getenv("PHXFS_TRACE");
    return v && *v && std::string(v) != "0" ? v : nullptr;
}

// The destination, opened on the first line.
int destination() {
    static const int fd = [] {
        const char *v = env_value();
        if (!v || std::string(v) == "1" || std::string(v) == "stderr")
            return STDERR_FILENO;
        const int f = ::open(v, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        return f >= 0 ? f : STDERR_FILENO;
    }();
    return fd;
}

} // namespace

bool from_env() {
    return env_value() != nullptr;
}

void write(const std::string &line) {
    static std::mutex m; // whole lines, never interleaved
    const std::string out = "phxfs[" + std::to_string(::getpid()) + "]: " + line + "\n";
    std::lock_guard lock(m);
    const int fd = destination();
    for (size_t done = 0; done < out.size();) {
        const ssize_t r = ::write(fd, out.data() + done, out.size() - done);
        if (r <= 0)
            return; // a trace must never fail the I/O it describes
        done += static_cast<size_t>(r);
    }
}

} // namespace phxfs::core::trace
