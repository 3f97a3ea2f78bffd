// The worker pool under the engines: a request's body refers to its
// caller's stack frame, so run_parallel() must not return, normally or by an
// exception, while a pool worker runs or may still start that body.
#include "engine/workers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <set>
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

// Each device has a pool of its own (#14): a request holding every worker
// of one pool leaves another pool's workers free for its own requests,
// which a process-wide pool sized to the widest request would not.
TEST(Workers, APoolsWorkersServeOnlyIt) {
    phxfs::core::WorkerPool busy, other;
    std::mutex m;
    std::condition_variable cv;
    bool release = false;
    std::atomic<int> held{0};
    std::thread holder([&] {
        busy.run(4, [&] {
            ++held;
            std::unique_lock lock(m);
            cv.wait(lock, [&] { return release; });
        });
    });
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (held.load() < 4 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(1ms);
    ASSERT_EQ(held.load(), 4) << "the first pool's workers did not all start";
    // The other pool's workers join its request while the first is held.
    std::mutex seen_m;
    std::set<std::thread::id> seen;
    std::atomic<int> arrived{0};
    other.run(4, [&] {
        {
            std::lock_guard lock(seen_m);
            seen.insert(std::this_thread::get_id());
        }
        ++arrived;
        // Stay until the others came (or a second passed), so that each
        // participant is a thread of its own.
        const auto t = std::chrono::steady_clock::now() + 1s;
        while (arrived.load() < 4 && std::chrono::steady_clock::now() < t)
            std::this_thread::sleep_for(1ms);
    });
    EXPECT_EQ(seen.size(), 4u) << "the other pool's request ran on fewer threads";
    EXPECT_EQ(other.threads(), 3u);
    {
        std::lock_guard lock(m);
        release = true;
    }
    cv.notify_all();
    holder.join();
}

// A pool may go while its workers idle; they leave on their own.
TEST(Workers, APoolMayGoWithItsWorkers) {
    for (int i = 0; i < 20; ++i) {
        phxfs::core::WorkerPool pool;
        std::atomic<int> runs{0};
        pool.run(4, [&] { ++runs; });
        EXPECT_GE(runs.load(), 1);
    }
}

// Workers that spin between bodies take new ones without a wake-up; a run
// must still get every participant it asks for when its spinners stop
// spinning at the moment it counts them (the pauses between runs below
// straddle the spin time), or the body that waits for all of them would
// time out.
TEST(Workers, SpinningWorkersJoinEveryRun) {
    using Spin = phxfs::core::WorkerPool::Spin;
    for (const Spin spin : {Spin{20, 64}, Spin{2000, 2}}) {
        phxfs::core::WorkerPool pool(spin);
        std::minstd_rand rng(7);
        for (int round = 0; round < 300; ++round) {
            std::atomic<int> arrived{0};
            std::atomic<bool> all{true};
            pool.run(4, [&] {
                ++arrived;
                const auto t = std::chrono::steady_clock::now() + 5s;
                while (arrived.load() < 4 && std::chrono::steady_clock::now() < t)
                    std::this_thread::yield();
                if (arrived.load() < 4)
                    all = false; // only the caller's run can still be here alone
            });
            ASSERT_TRUE(all.load()) << "round " << round << ": " << arrived.load()
                                    << " of 4 participants came (spin " << spin.us << " us)";
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 40));
        }
        EXPECT_EQ(pool.queued(), 0u) << "a body was left in the queue";
    }
}

} // namespace
