// The worker pool under the engines: a request's body refers to its
// caller's stack frame, so run_parallel() must not return, normally or by an
// exception, while a pool worker runs or may still start that body.
#include "engine/workers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

namespace {

using namespace std::chrono_literals;

TEST(Workers, CallerExceptionWaitsForWorkers) {
    for (int round = 0; round < 20; ++round) {
        std::atomic<int> started{0}, finished{0};
        const auto caller = std::this_thread::get_id();
        EXPECT_THROW(phxfs::core::run_parallel(4,
                                               [&] {
                                                   if (std::this_thread::get_id() == caller)
                                                       throw std::runtime_error("staging");
                                                   ++started;
                                                   std::this_thread::sleep_for(20ms);
                                                   ++finished;
                                               }),
                     std::runtime_error);
        EXPECT_EQ(started.load(), finished.load()) << "returned while a worker ran the body";
        const int seen = started.load();
        std::this_thread::sleep_for(30ms);
        EXPECT_EQ(started.load(), seen) << "a worker started the body after the caller left";
    }
}

TEST(Workers, EveryParticipantRunsOnceAtMost) {
    std::atomic<int> runs{0};
    phxfs::core::run_parallel(8, [&] { ++runs; });
    EXPECT_GE(runs.load(), 1);
    EXPECT_LE(runs.load(), 8);
}

} // namespace
