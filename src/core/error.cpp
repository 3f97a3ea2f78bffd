#include "core/error.hpp"

#include <cstdio>
#include <cstring>
#include <new>

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

Failure current_failure() {
    try {
        throw;
    } catch (const Error &e) {
        return {e.err(), e.what()};
    } catch (const std::bad_alloc &) {
        return {ENOMEM, "out of memory"};
    } catch (const std::exception &e) {
        return {EIO, std::string("internal error: ") + e.what()};
    } catch (...) {
        return {EIO, "internal error"};
    }
}

} // namespace phxfs::core
