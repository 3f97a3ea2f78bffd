// The library's io_uring ring breaking in the middle of a batch of direct
// requests, over the fault-injection build of libphxfs: io_uring_enter
// submits the first requests to the NVMe disk, then fails. The ring is not
// closed under the transfers the disk has: they are waited for and are done
// (none is left "in doubt", to land after its caller was told it failed);
// those the ring never had run alone, direct, as they would have without
// io_uring. The next batch makes a new ring.
#include "core/config.hpp"
#include "core/fault.hpp"
#include "guest.hpp"

#include <algorithm>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

using namespace phxtest;
using namespace phxguest;
namespace core = phxfs::core;
namespace fault = phxfs::core::fault;

namespace {

// Reads of 256 KiB: long enough that some are still in flight when the
// ring breaks a moment after submitting them.
constexpr uint64_t kBar = 384ull << 20, kDisk = 440ull << 20, kLen = 256 << 10;
constexpr size_t kN = 64, kDepth = 16;

// Runs the reads of the kN slots (slot i from disk slot from[i]) as one
// batch; returns the completions by slot.
std::vector<phxfs_completion> read_batch(phxfs_batch_t b, phxfs_file_t fh,
                                         const std::vector<uint64_t> &from) {
    std::vector<phxfs_io> ios;
    for (size_t i = 0; i < kN; ++i)
        ios.push_back({fh, PHXFS_OP_READ, 0, reinterpret_cast<void *>(kBar), i * kLen, kLen,
                       kDisk + from[i] * kLen, reinterpret_cast<void *>(i)});
    EXPECT_EQ(phxfs_batch_submit(b, ios.data(), kN), static_cast<int>(kN)) << phxfs_last_error();
    std::vector<phxfs_completion> cs(kN), by_slot(kN);
    for (size_t got = 0; got < kN;) {
        const int r = phxfs_batch_reap(b, cs.data() + got, 1, kN - got, -1);
        if (r <= 0) {
            ADD_FAILURE() << phxfs_last_error();
            break;
        }
        got += r;
    }
    for (const phxfs_completion &c : cs)
        by_slot[reinterpret_cast<uintptr_t>(c.user_data)] = c;
    return by_slot;
}

// The path trace's lines written since the last call (seen: bytes of the
// file read so far), by the request's file offset; a request traced twice
// (run again) fails the test.
std::map<uint64_t, std::string> new_lines(const char *path, size_t &seen) {
    std::stringstream all;
    all << std::ifstream(path).rdbuf();
    const std::string text = all.str();
    std::istringstream ls(text.substr(std::min(seen, text.size())));
    seen = text.size();
    std::map<uint64_t, std::string> at;
    for (std::string line; std::getline(ls, line);) {
        const size_t pos = line.find(" B at ");
        if (pos == std::string::npos) {
            ADD_FAILURE() << line;
            continue;
        }
        const uint64_t off = std::stoull(line.substr(pos + 6));
        EXPECT_TRUE(at.emplace(off, line).second) << "traced twice (run again?):\n"
                                                  << at[off] << "\n"
                                                  << line;
    }
    return at;
}

TEST(UringBreak, TakenRequestsAreWaitedForTheOthersRunAlone) {
    const char *disk = raw_disk();
    if (!disk)
        GTEST_SKIP() << "PHXFS_GUEST_DISK not set";
    disk_pattern(kDisk, kN * kLen, 95);
    ASSERT_EQ(phxfs_open(0), 0) << phxfs_last_error();
    void *t = nullptr;
    ASSERT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(kBar), kN * kLen, &t), 0)
        << phxfs_last_error();
    const auto *mapped = static_cast<const uint8_t *>(t);
    const int fd = ::open(disk, O_RDWR);
    ASSERT_GE(fd, 0);
    phxfs_file_t fh = nullptr;
    ASSERT_EQ(phxfs_file_open(&fh, 0, fd), 0) << phxfs_last_error();
    phxfs_batch_t b = nullptr;
    ASSERT_EQ(phxfs_batch_create(&b, 256), 0);
    const core::Config saved = core::config();
    core::Config c = saved;
    c.uring_depth = kDepth;
    c.trace = true;
    core::set_config(c);
    const char *trace_path = "/tmp/uring-break.trace";
    const int trace_fd = ::open(trace_path, O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0644);
    ASSERT_GE(trace_fd, 0);
    const int stderr_fd = ::dup(2);
    ::dup2(trace_fd, 2);
    size_t seen = 0;
    std::mt19937 rng(96);
    std::vector<uint64_t> from(kN);
    std::iota(from.begin(), from.end(), 0);
    std::shuffle(from.begin(), from.end(), rng); // the same every batch: see the end

    // The first io_uring_enter of a batch submits its first 16 reads, then
    // fails. The ring had those 16: each is waited for and done by the ring;
    // the other 48 run alone.
    {
        fault::arm(fault::Site::uring_wait, {EIO}, 0, 1);
        const auto broken = read_batch(b, fh, from);
        EXPECT_EQ(fault::hits(fault::Site::uring_wait), 1u);
        fault::disarm();
        const auto lines = new_lines(trace_path, seen);
        size_t on_ring = 0, alone = 0;
        for (size_t i = 0; i < kN; ++i) {
            const phxfs_completion &x = broken[i];
            const auto it = lines.find(kDisk + from[i] * kLen);
            const std::string line = it == lines.end() ? "no trace line" : it->second;
            EXPECT_EQ(x.status, PHXFS_IO_DONE) << i << ": " << x.error;
            EXPECT_EQ(x.result, static_cast<int64_t>(kLen)) << i << ": " << x.error;
            if (line.find("direct 262144 B (io_uring)") != std::string::npos)
                ++on_ring;
            else if (line.find("direct 262144 B,") != std::string::npos)
                ++alone;
            else
                ADD_FAILURE() << "slot " << i << ": " << line;
        }
        std::printf("%zu done by the ring, %zu run alone\n", on_ring, alone);
        EXPECT_EQ(on_ring, kDepth);
        EXPECT_EQ(alone, kN - kDepth);
    }

    // The next batch makes a new ring.
    const auto after = read_batch(b, fh, from);
    const auto lines = new_lines(trace_path, seen);
    for (size_t i = 0; i < kN; ++i) {
        EXPECT_EQ(after[i].result, static_cast<int64_t>(kLen)) << i << ": " << after[i].error;
        const auto it = lines.find(kDisk + from[i] * kLen);
        EXPECT_TRUE(it != lines.end() && it->second.find("(io_uring)") != std::string::npos) << i;
    }
    ::dup2(stderr_fd, 2);
    ::close(stderr_fd);
    ::close(trace_fd);
    core::set_config(saved);
    // The slots as that batch left them (every batch reads slot i from the
    // same place).
    EXPECT_EQ(first_mismatch(mapped, kLen, kDisk + from[0] * kLen, 95), kLen);
    for (size_t i = 0; i < kN; ++i)
        hostcheck_bar(kBar + i * kLen, kDisk + from[i] * kLen, kLen);

    EXPECT_EQ(phxfs_batch_destroy(b), 0);
    EXPECT_EQ(phxfs_file_close(fh), 0);
    ::close(fd);
    EXPECT_EQ(phxfs_deregmem(0, reinterpret_cast<void *>(kBar), kN * kLen), 0);
    EXPECT_EQ(phxfs_close(0), 0);
}

} // namespace
