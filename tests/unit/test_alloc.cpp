// A warm batch allocates nothing per request (#12): every operator new of
// the process is counted while batches of small reads and writes run. Its
// own program, because it replaces the global operator new; not built under
// the sanitizers, which replace it themselves.
#include "testutil.hpp"
#include "uring_util.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<uint64_t> news{0};
} // namespace

void *operator new(size_t n) {
    news.fetch_add(1, std::memory_order_relaxed);
    if (void *p = std::malloc(n ? n : 1))
        return p;
    throw std::bad_alloc();
}
void operator delete(void *p) noexcept {
    std::free(p);
}
void operator delete(void *p, size_t) noexcept {
    std::free(p);
}

using namespace phxtest;

namespace {

class Alloc : public DeviceTest {};

// Rounds of 256 reads of 4 KiB, then 256 writes, through one batch: after
// two warm-up rounds, what the rounds allocate is a small number per round
// (the executor's hand-off to its workers), not one per request.
TEST_F(Alloc, WarmBatchesAllocateNothingPerRequest) {
    small_chunks(4, 1 << 20);
    const std::string path = pattern_file("a.dat", 8 << 20);
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    phxfs_file_t fh = nullptr;
    ASSERT_EQ(phxfs_file_open(&fh, 0, fd), 0);
    phxfs_batch_t b = nullptr;
    constexpr unsigned kN = 256;
    ASSERT_EQ(phxfs_batch_create(&b, kN), 0);
    auto buf = host_buffer(kN * 4096);
    std::vector<phxfs_io> ios(kN);
    std::vector<phxfs_completion> cs(kN);
    auto round = [&](uint32_t op) {
        for (unsigned i = 0; i < kN; ++i)
            ios[i] = {fh,     op, 0, buf.get(), i * 4096ull, 4096, (i * 7919ull % 2048) * 4096,
                      nullptr};
        ASSERT_EQ(phxfs_batch_submit(b, ios.data(), kN), static_cast<int>(kN));
        for (unsigned got = 0; got < kN;) {
            const int r = phxfs_batch_reap(b, cs.data() + got, 1, kN - got, -1);
            ASSERT_GT(r, 0);
            for (int j = 0; j < r; ++j)
                ASSERT_EQ(cs[got + j].result, 4096) << cs[got + j].error;
            got += r;
        }
    };
    for (int warm = 0; warm < 2; ++warm) {
        round(PHXFS_OP_READ);
        round(PHXFS_OP_WRITE);
    }
    constexpr int kRounds = 20;
    const uint64_t before = news.load();
    for (int r = 0; r < kRounds; ++r) {
        round(PHXFS_OP_READ);
        round(PHXFS_OP_WRITE);
    }
    const uint64_t per_round = (news.load() - before) / (2 * kRounds);
    std::printf("operator new per round of %u requests: %llu\n", kN,
                static_cast<unsigned long long>(per_round));
    EXPECT_LT(per_round, kN / 16) << "allocations grow with the requests";
    EXPECT_EQ(phxfs_batch_destroy(b), 0);
    EXPECT_EQ(phxfs_file_close(fh), 0);
    ::close(fd);
}

// A warm io_uring ring (src/engine/uring.hpp) allocates nothing at all:
// its pieces are the caller's, its ring made once per thread.
TEST_F(RingTest, WarmRingAllocatesNothing) {
    constexpr size_t kN = 600;
    auto p = reads("data", kN, 3);
    ASSERT_TRUE(phxfs::core::uring::run(p.data(), p.size())); // makes the ring
    const uint64_t before = news.load();
    for (int r = 0; r < 5; ++r)
        ASSERT_TRUE(phxfs::core::uring::run(p.data(), p.size()));
    EXPECT_EQ(news.load() - before, 0u);
    EXPECT_EQ(count_of(p, Outcome::done), kN);
}

} // namespace
