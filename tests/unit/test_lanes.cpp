// Staging lanes (engine/lanes.hpp) shared by requests side by side: a
// helper waits for a lane while its request still has work, and leaves as
// soon as the request's work is all taken.
#include "engine/lanes.hpp"
#include "memory/memory.hpp"

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

} // namespace
