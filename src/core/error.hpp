// Errors inside libphxfs: one exception type carrying errno and a message,
// and the per-thread last-error string the C API exposes.
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>

namespace phxfs::core {

class Error : public std::system_error {
  public:
    Error(int err, const std::string &what)
        : std::system_error(err, std::generic_category(), what) {}
    int err() const noexcept { return code().value(); }
};

// Throws Error(err, what). Use for every failure the caller must see.
[[noreturn]] void fail(int err, const std::string &what);
// Throws Error(errno, what + ": " + strerror(errno)).
[[noreturn]] void fail_errno(const std::string &what);

// "0x1f000": addresses and offsets in messages.
std::string hex(uint64_t v);

void set_last_error(std::string msg);
const std::string &last_error();

// errno and message of the exception being handled: call in a catch block.
struct Failure {
    int err;
    std::string message;
};
Failure current_failure();

// Runs fn for the C API: on success clears nothing and returns fn's value;
// on failure sets errno and the last-error message and returns -1.
template <typename Fn> auto c_call(Fn &&fn) noexcept -> decltype(fn()) {
    try {
        return std::forward<Fn>(fn)();
    } catch (...) {
        Failure f = current_failure();
        set_last_error(std::move(f.message));
        errno = f.err;
    }
    return -1;
}

} // namespace phxfs::core
