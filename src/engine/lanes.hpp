// Staging lanes: a lane is two pinned staging buffers, adjacent in one
// allocation, and a copy stream: the unit one pipeline participant works
// with. Reads from storage use the two as one buffer of twice the size.
// Lanes are made on first need and reused, so no I/O call allocates staging
// memory.
#pragma once

#include "memory/memory.hpp"

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace phxfs::core {

struct Lane {
    size_t bytes = 0;                      // size of each staging buffer
    StagingBuffer region;                  // both buffers: [0, bytes) and [bytes, 2 * bytes)
    std::unique_ptr<Stream> stream;        // copies to and from the device's memory
    std::atomic<uint64_t> *held = nullptr; // the device's staging count, which has region
    // A load's copies (CompatEngine::read_many, write_many), kept for the
    // next one.
    std::vector<Stream::Copy> copies;

    Lane() = default;
    Lane(const Lane &) = delete;
    Lane &operator=(const Lane &) = delete;
    ~Lane() {
        if (held)
            held->fetch_sub(2 * bytes);
    }
    char *staging(int i) const { return static_cast<char *>(region.get()) + i * bytes; }
};

class LanePool {
  public:
    // held counts the staging bytes of the pool's lanes (the device's stats).
    LanePool(Backend &backend, std::atomic<uint64_t> &held) : backend_(backend), held_(held) {}

    // A lane with buffers of `bytes`, within a budget of `budget` bytes of
    // staging memory. acquire() waits for one; try_acquire() returns null
    // when none is free and the budget is spent, or, given `closed`, waits
    // for one until closed is set and close() called (the helper of a
    // request whose work has all been taken has no use for a lane).
    std::unique_ptr<Lane> acquire(size_t bytes, size_t budget);
    std::unique_ptr<Lane> try_acquire(size_t bytes, size_t budget,
                                      const std::atomic<bool> *closed = nullptr);
    // Sets closed and wakes the try_acquire() calls waiting on it.
    void close(std::atomic<bool> &closed);
    // Takes a lane back: idle for the next request, or freed when the pool
    // holds more than the budget last asked for (it was lowered).
    void release(std::unique_ptr<Lane> lane);
    // Takes budget as the new one (the configuration changed) and frees
    // idle lanes until the pool fits it.
    void trim(size_t budget);

  private:
    std::unique_ptr<Lane> take_locked(size_t bytes, size_t budget, bool &must_make,
                                      std::vector<std::unique_ptr<Lane>> &drop);
    void drop_idle_locked(std::vector<std::unique_ptr<Lane>> &drop);
    std::unique_ptr<Lane> make(size_t bytes);

    Backend &backend_;
    std::atomic<uint64_t> &held_;
    std::mutex m_;
    std::condition_variable cv_;
    std::vector<std::unique_ptr<Lane>> idle_;
    size_t in_use_bytes_ = 0;  // staging bytes of lanes handed out or idle
    size_t idle_bytes_ = 0;    // of those, idle
    size_t budget_ = SIZE_MAX; // the first request's, then what trim() says
};

// Returns a lane to its pool when it leaves scope.
class LaneLease {
  public:
    LaneLease(LanePool &pool, std::unique_ptr<Lane> lane) : pool_(pool), lane_(std::move(lane)) {}
    ~LaneLease() {
        if (lane_)
            pool_.release(std::move(lane_));
    }
    LaneLease(const LaneLease &) = delete;
    LaneLease &operator=(const LaneLease &) = delete;
    explicit operator bool() const { return lane_ != nullptr; }
    Lane *operator->() const { return lane_.get(); }
    Lane &operator*() const { return *lane_; }

  private:
    LanePool &pool_;
    std::unique_ptr<Lane> lane_;
};

} // namespace phxfs::core
