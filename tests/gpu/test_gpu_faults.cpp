// libphxfs on a real GPU under failures it cannot cause itself (src/core/fault.hpp:
// pinned staging that cannot be allocated, streams that cannot be created,
// copies that fail) and in a forked child of a process that initialised
// CUDA: clear errors, no hang, no staging left behind, and a library that
// works again once the fault is gone. Runs on a GPU machine (ctest -L gpu).
#include "core/fault.hpp"
#include "gpu_test.hpp"

#include <cuda_runtime.h>

#include <sys/wait.h>

#include <string>

using namespace phxtest;
namespace fault = phxfs::core::fault;
using fault::Site;

namespace {

constexpr size_t kLen = 16 << 20;

class GpuFaults : public GpuTest {
  protected:
    void SetUp() override {
        GpuTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        small_chunks(4, 1 << 20);
        ASSERT_EQ(cudaMalloc(&gpu_, kLen), cudaSuccess);
        path_ = pattern_file("data", kLen);
        fd_ = ::open(path_.c_str(), O_RDWR);
        ASSERT_GE(fd_, 0);
    }
    void TearDown() override {
        fault::disarm();
        if (fd_ >= 0)
            ::close(fd_);
        if (gpu_)
            cudaFree(gpu_);
        GpuTest::TearDown();
        if (opened_) {
            EXPECT_EQ(staging(), 0u) << "the last close frees every lane";
        }
    }
    uint64_t staging() {
        phxfs_stats st{};
        st.size = sizeof st;
        EXPECT_EQ(phxfs_get_stats(0, &st), 0);
        return st.staging_bytes;
    }
    bool gpu_matches() {
        std::vector<uint8_t> h(kLen);
        EXPECT_EQ(cudaMemcpy(h.data(), gpu_, kLen, cudaMemcpyDeviceToHost), cudaSuccess);
        return first_mismatch_fast(h.data(), kLen, 0) == kLen;
    }
    void *gpu_ = nullptr;
    std::string path_;
    int fd_ = -1;
};

TEST_F(GpuFaults, PinnedStagingAndStreamFailuresAreClear) {
    for (Site site : {Site::staging_alloc, Site::stream_create}) {
        ASSERT_EQ(phxfs_close(0), 0); // no lane left: every one is made anew
        ASSERT_EQ(phxfs_open(0), 0);
        fault::arm(site, {.err = ENOMEM}, 0, 0);
        errno = 0;
        EXPECT_EQ(phxfs_read({fd_, 0}, gpu_, 0, kLen, 0), -1);
        EXPECT_EQ(errno, ENOMEM);
        EXPECT_NE(std::string(phxfs_last_error()).find("(injected)"), std::string::npos)
            << phxfs_last_error();
        EXPECT_EQ(staging(), 0u);
        fault::disarm();
        ASSERT_EQ(phxfs_read({fd_, 0}, gpu_, 0, kLen, 0), static_cast<ssize_t>(kLen))
            << phxfs_last_error();
        EXPECT_TRUE(gpu_matches());
    }
}

TEST_F(GpuFaults, FailedCopiesSurfaceAndTheContextStaysUsable) {
    // The GPU holds the file's bytes, so that the failed write below leaves
    // the file as it is.
    ASSERT_EQ(phxfs_read({fd_, 0}, gpu_, 0, kLen, 0), static_cast<ssize_t>(kLen));
    fault::arm(Site::copy, {.err = EIO}, 3, 1);
    errno = 0;
    EXPECT_EQ(phxfs_read({fd_, 0}, gpu_, 0, kLen, 0), -1);
    EXPECT_EQ(errno, EIO);
    fault::arm(Site::pwrite, {.err = ENOSPC}, 2, 1);
    errno = 0;
    EXPECT_EQ(phxfs_write({fd_, 0}, gpu_, 0, kLen, 0), -1);
    EXPECT_EQ(errno, ENOSPC);
    fault::disarm();
    ASSERT_EQ(phxfs_read({fd_, 0}, gpu_, 0, kLen, 0), static_cast<ssize_t>(kLen))
        << phxfs_last_error();
    EXPECT_TRUE(gpu_matches());
}

// CUDA cannot run in a forked child of a process that initialised it: the
// child gets its devices closed and a phxfs_open that says why, never a hang
// or a crash.
TEST_F(GpuFaults, ForkedChildGetsClearErrors) {
    ASSERT_EQ(phxfs_read({fd_, 0}, gpu_, 0, kLen, 0), static_cast<ssize_t>(kLen));
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::alarm(30);
        int rc = 0;
        if (phxfs_read({fd_, 0}, gpu_, 0, kLen, 0) != -1 || errno != EBADF)
            rc |= 1;
        if (std::string(phxfs_last_error()).find("fork()") == std::string::npos)
            rc |= 2;
        if (phxfs_open(0) != -1 || errno != ENODEV)
            rc |= 4;
        std::fprintf(stderr, "child: phxfs_open(0): %s\n", phxfs_last_error());
        if (std::string(phxfs_last_error()).find("before fork()") == std::string::npos)
            rc |= 8;
        ::_exit(rc);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "failed checks (bits): " << WEXITSTATUS(status);
    // The parent goes on as before.
    ASSERT_EQ(phxfs_read({fd_, 0}, gpu_, 0, kLen, 0), static_cast<ssize_t>(kLen));
    EXPECT_TRUE(gpu_matches());
}

} // namespace
