#include "engine/lanes.hpp"

#include "core/error.hpp"
#include "core/fault.hpp"

#include <string>

namespace phxfs::core {

// Makes a lane whose budget take_locked() reserved; gives the budget back if
// the allocation fails.
std::unique_ptr<Lane> LanePool::make(size_t bytes) {
    try {
        auto lane = std::make_unique<Lane>();
        lane->bytes = bytes;
        if (auto f = fault::at(fault::Site::staging_alloc))
            fail(f->err, "allocating " + std::to_string(2 * bytes) +
                             " bytes of staging memory "
                             "(injected)");
        lane->region = backend_.alloc_staging(2 * bytes);
        if (auto f = fault::at(fault::Site::stream_create))
            fail(f->err, "creating a copy stream (injected)");
        lane->stream = backend_.make_stream();
        held_.fetch_add(2 * bytes);
        lane->held = &held_;
        return lane;
    } catch (...) {
        {
            std::lock_guard lock(m_);
            in_use_bytes_ -= 2 * bytes;
        }
        cv_.notify_one();
        throw;
    }
}

// Takes an idle lane of the right size, or reserves budget for a new one
// (must_make), or returns null when the caller has to wait. Idle lanes of
// another size that stand in the way go to `drop`, freed outside the lock.
std::unique_ptr<Lane> LanePool::take_locked(size_t bytes, size_t budget, bool &must_make,
                                            std::vector<std::unique_ptr<Lane>> &drop) {
    must_make = false;
    if (budget_ == SIZE_MAX)
        budget_ = budget; // later changes come through trim()
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if ((*it)->bytes == bytes) {
            auto lane = std::move(*it);
            idle_.erase(it);
            idle_bytes_ -= 2 * bytes;
            return lane;
        }
    }
    // Idle lanes of another size (the chunk size changed) give their budget back.
    while (!idle_.empty() && in_use_bytes_ + 2 * bytes > budget)
        drop_idle_locked(drop);
    // The first lane is always allowed, so a tiny budget cannot deadlock.
    if (in_use_bytes_ == 0 || in_use_bytes_ + 2 * bytes <= budget) {
        in_use_bytes_ += 2 * bytes;
        must_make = true;
    }
    return nullptr;
}

void LanePool::drop_idle_locked(std::vector<std::unique_ptr<Lane>> &drop) {
    const size_t b = 2 * idle_.back()->bytes;
    in_use_bytes_ -= b;
    idle_bytes_ -= b;
    drop.push_back(std::move(idle_.back()));
    idle_.pop_back();
}

std::unique_ptr<Lane> LanePool::acquire(size_t bytes, size_t budget) {
    std::vector<std::unique_ptr<Lane>> drop;
    std::unique_lock lock(m_);
    bool retried = false;
    for (;;) {
        bool must_make = false;
        if (auto lane = take_locked(bytes, budget, must_make, drop))
            return lane;
        if (must_make) {
            lock.unlock();
            drop.clear();
            try {
                return make(bytes);
            } catch (...) {
                // Out of pinned memory (or streams). Idle lanes give their
                // memory back for one more try; lanes handed out come back
                // when their requests end, so wait for one of those; with
                // none out, nothing will come: fail.
                lock.lock();
                if (!idle_.empty() && !retried) {
                    retried = true;
                    while (!idle_.empty())
                        drop_idle_locked(drop);
                    continue;
                }
                if (in_use_bytes_ == idle_bytes_)
                    throw;
            }
        }
        cv_.wait(lock);
    }
}

std::unique_ptr<Lane> LanePool::try_acquire(size_t bytes, size_t budget,
                                            const std::atomic<bool> *closed) {
    std::vector<std::unique_ptr<Lane>> drop;
    std::unique_lock lock(m_);
    bool must_make = false;
    for (;;) {
        if (auto lane = take_locked(bytes, budget, must_make, drop))
            return lane;
        if (must_make || !closed || *closed)
            break;
        if (!drop.empty()) { // idle lanes of another size: freed before waiting
            lock.unlock();
            drop.clear();
            lock.lock();
            continue;
        }
        cv_.wait(lock); // a lane comes back, or close()
    }
    lock.unlock();
    drop.clear();
    if (!must_make)
        return nullptr;
    try {
        return make(bytes);
    } catch (...) {
        return nullptr; // the caller's own lane carries on
    }
}

void LanePool::release(std::unique_ptr<Lane> lane) {
    {
        std::lock_guard lock(m_);
        if (in_use_bytes_ > budget_) {
            in_use_bytes_ -= 2 * lane->bytes; // freed below, outside the lock
        } else {
            idle_bytes_ += 2 * lane->bytes;
            idle_.push_back(std::move(lane));
        }
    }
    cv_.notify_all();
}

void LanePool::close(std::atomic<bool> &closed) {
    {
        std::lock_guard lock(m_); // a waiter checks closed under the lock
        closed = true;
    }
    cv_.notify_all();
}

void LanePool::trim(size_t budget) {
    std::vector<std::unique_ptr<Lane>> drop; // freed outside the lock
    {
        std::lock_guard lock(m_);
        budget_ = budget;
        while (!idle_.empty() && in_use_bytes_ > budget)
            drop_idle_locked(drop);
    }
    cv_.notify_all();
}

} // namespace phxfs::core
