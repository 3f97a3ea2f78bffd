// #11 finding 10: the library's worker threads live on after dlclose, so
// the library must stay mapped (-z nodelete); a program that loads it with
// dlopen, does parallel I/O and closes it again must not crash later.
#include "testutil.hpp"

#include <dlfcn.h>

#include <chrono>
#include <thread>

namespace {

TEST(Dlclose, WorkerThreadsOutliveDlclose) {
    phxtest::TempDir dir;
    const std::string path = dir.file("dl");
    phxtest::make_pattern_file(path, 8 << 20);
    void *lib = ::dlopen(PHXFS_SHARED_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(lib, nullptr) << ::dlerror();
    using open_fn = int (*)(int);
    using read_fn = ssize_t (*)(phxfs_fileid_t, void *, off_t, size_t, off_t);
    using close_fn = int (*)(int);
    auto p_open = reinterpret_cast<open_fn>(::dlsym(lib, "phxfs_open"));
    auto p_read = reinterpret_cast<read_fn>(::dlsym(lib, "phxfs_read"));
    auto p_close = reinterpret_cast<close_fn>(::dlsym(lib, "phxfs_close"));
    ASSERT_TRUE(p_open && p_read && p_close);
    ASSERT_EQ(p_open(0), 0);
    auto buf = phxtest::host_buffer(8 << 20);
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_EQ(p_read({fd, 0}, buf.get(), 0, 8 << 20, 0), 8 << 20); // wakes the pool
    ::close(fd);
    ASSERT_EQ(p_close(0), 0);
    ASSERT_EQ(::dlclose(lib), 0);
    // The pool's threads idle in the library's code; were it unmapped, they
    // would fault as soon as they run again.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_NE(::dlopen(PHXFS_SHARED_LIBRARY, RTLD_NOW | RTLD_NOLOAD), nullptr)
        << "the library was unmapped while its threads lived";
}

} // namespace
