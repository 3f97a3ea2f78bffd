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
    std::unique_ptr<Backend> backend_ = make_host_backend();
    std::atomic<uint64_t> held_{0};
    LanePool pool_{*backend_, held_};
};

TEST_F(Lanes, TryAcquireWithoutCloseReturnsAtOnce) {
    auto a = pool_.acquire(kBytes, kBudget);
    auto b = pool_.acquire(kBytes, kBudget);
    EXPECT_EQ(pool_.try_acquire(kBytes, kBudget), nullptr) << "the budget is spent";
    EXPECT_EQ(held_.load(), kBudget);
    pool_.release(std::move(a));
    pool_.release(std::move(b));
}

TEST_F(Lanes, HelperWaitsForALaneWhileItsRequestHasWork) {
    auto a = pool_.acquire(kBytes, kBudget);
    auto b = pool_.acquire(kBytes, kBudget);
    std::atomic<bool> taken{false};
    auto helper =
        std::async(std::launch::async, [&] { return pool_.try_acquire(kBytes, kBudget, &taken); });
    EXPECT_EQ(helper.wait_for(50ms), std::future_status::timeout) << "it did not wait";
    Lane *given = a.get();
    pool_.release(std::move(a));
    ASSERT_EQ(helper.wait_for(10s), std::future_status::ready);
    auto got = helper.get();
    EXPECT_EQ(got.get(), given) << "the lane given back went to the waiting helper";
    pool_.release(std::move(got));
    pool_.release(std::move(b));
}

TEST_F(Lanes, CloseSendsWaitingHelpersAway) {
    auto a = pool_.acquire(kBytes, kBudget);
    auto b = pool_.acquire(kBytes, kBudget);
    std::atomic<bool> taken{false};
    auto h1 =
        std::async(std::launch::async, [&] { return pool_.try_acquire(kBytes, kBudget, &taken); });
    auto h2 =
        std::async(std::launch::async, [&] { return pool_.try_acquire(kBytes, kBudget, &taken); });
    EXPECT_EQ(h1.wait_for(50ms), std::future_status::timeout);
    pool_.close(taken);
    ASSERT_EQ(h1.wait_for(10s), std::future_status::ready);
    ASSERT_EQ(h2.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(h1.get(), nullptr);
    EXPECT_EQ(h2.get(), nullptr);
    EXPECT_EQ(pool_.try_acquire(kBytes, kBudget, &taken), nullptr) << "closed: no wait";
    pool_.release(std::move(a));
    pool_.release(std::move(b));
}

} // namespace
