// Staging lanes (engine/lanes.hpp) shared by requests side by side: a
// helper waits for a lane while its request still has work, and leaves as
// soon as the request's work is all taken. And the compat engine's groups
// (CompatEngine::read_many) over them: a piece that fits no lane fails
// alone, and never costs its neighbours their bytes.
#include "core/config.hpp"
#include "engine/compat.hpp"
#include "engine/lanes.hpp"
#include "engine/workers.hpp"
#include "memory/memory.hpp"
#include "testutil.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

using namespace phxfs::core;
using namespace std::chrono_literals;

namespace {

constexpr size_t kBytes = 64 << 10;
constexpr size_t kBudget = 2 * 2 * kBytes; // two lanes

class Lanes : public ::testing::Test {
  protected:
    void SetUp() override {
        a_ = pool_.acquire(kBytes, kBudget);
        b_ = pool_.acquire(kBytes, kBudget); // the budget is spent
    }
    void TearDown() override {
        if (a_)
            pool_.release(std::move(a_));
        if (b_)
            pool_.release(std::move(b_));
    }
    // A request's helper asking for a lane on another thread.
    std::future<std::unique_ptr<Lane>> helper() {
        return std::async(std::launch::async,
                          [this] { return pool_.try_acquire(kBytes, kBudget, &taken_); });
    }
    std::unique_ptr<Backend> backend_ = make_host_backend();
    std::atomic<uint64_t> held_{0};
    LanePool pool_{*backend_, held_};
    std::unique_ptr<Lane> a_, b_;
    std::atomic<bool> taken_{false};
};

TEST_F(Lanes, TryAcquireWithoutCloseReturnsAtOnce) {
    EXPECT_EQ(pool_.try_acquire(kBytes, kBudget), nullptr) << "the budget is spent";
    EXPECT_EQ(held_.load(), kBudget);
}

TEST_F(Lanes, HelperWaitsForALaneWhileItsRequestHasWork) {
    auto h = helper();
    EXPECT_EQ(h.wait_for(50ms), std::future_status::timeout) << "it did not wait";
    Lane *given = a_.get();
    pool_.release(std::move(a_));
    ASSERT_EQ(h.wait_for(10s), std::future_status::ready);
    a_ = h.get();
    EXPECT_EQ(a_.get(), given) << "the lane given back went to the waiting helper";
}

TEST_F(Lanes, CloseSendsWaitingHelpersAway) {
    auto h1 = helper(), h2 = helper();
    EXPECT_EQ(h1.wait_for(50ms), std::future_status::timeout);
    pool_.close(taken_);
    ASSERT_EQ(h1.wait_for(10s), std::future_status::ready);
    ASSERT_EQ(h2.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(h1.get(), nullptr);
    EXPECT_EQ(h2.get(), nullptr);
    EXPECT_EQ(pool_.try_acquire(kBytes, kBudget, &taken_), nullptr) << "closed: no wait";
}

TEST(CompatGroup, APieceThatFitsNoLaneFailsAlone) {
    phxtest::TempDir dir;
    const std::string path = dir.file("data");
    phxtest::make_pattern_file(path, 1 << 20);
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    File file(fd);
    auto backend = make_host_backend();
    WorkerPool workers;
    std::atomic<uint64_t> held{0};
    CompatEngine engine(*backend, workers, held);
    Config cfg = config();
    cfg.threads = 2;
    cfg.chunk_bytes = 64 << 10;
    cfg.staging_bytes = 4 * cfg.chunk_bytes;
    // 40 KiB, then 100 KiB (more than a lane's buffer), then 40 KiB: the
    // third must not be packed behind the first as if the buffer were empty.
    const uint64_t len[] = {40 << 10, 100 << 10, 40 << 10}, off[] = {0, 100 << 10, 300 << 10};
    auto buf = phxtest::host_buffer(180 << 10);
    std::vector<CompatEngine::Piece> pieces;
    for (uint64_t i = 0, at = 0; i < 3; at += len[i++])
        pieces.push_back({&file,
                          reinterpret_cast<char *>(buf.get()) + at,
                          MemKind::host,
                          len[i],
                          off[i],
                          0,
                          {},
                          nullptr});
    engine.read_many(cfg, pieces.data(), pieces.size());
    EXPECT_TRUE(pieces[1].error) << "the piece larger than a buffer";
    for (size_t i : {0, 2}) {
        ASSERT_FALSE(pieces[i].error) << i;
        EXPECT_EQ(pieces[i].got, len[i]);
        const uint64_t at = i == 0 ? 0 : len[0] + len[1];
        EXPECT_EQ(phxtest::first_mismatch(buf.get() + at, len[i], off[i]), len[i]) << i;
    }
    ::close(fd);
}

} // namespace
