#include "core/error.hpp"

#include <cstdio>
#include <cstring>

namespace phxfs::core {

namespace {
thread_local std::string tls_last_error;
}

void fail(int err, const std::string &what) {
    throw Error(err, what);
}

void fail_errno(const std::string &what) {
    const int err = errno;
    throw Error(err, what + ": " + std::strerror(err));
}

std::string hex(uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

void set_last_error(std::string msg) {
    tls_last_error = std::move(msg);
}

const std::string &last_error() {
    return tls_last_error;
}

} // namespace phxfs::core
