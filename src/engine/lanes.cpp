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
// (must_make), or returns null when the caller has to wait.
std::unique_ptr<Lane> LanePool::take_locked(size_t bytes, size_t budget, bool &must_make) {
    must_make = false;
    budget_ = budget;
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if ((*it)->bytes == bytes) {
            auto lane = std::move(*it);
            idle_.erase(it);
            return lane;
        }
    }
    // Idle lanes of another size (the chunk size changed) give their budget back.
    while (!idle_.empty() && in_use_bytes_ + 2 * bytes > budget) {
        in_use_bytes_ -= 2 * idle_.back()->bytes;
        idle_.pop_back();
    }
    // The first lane is always allowed, so a tiny budget cannot deadlock.
    if (in_use_bytes_ == 0 || in_use_bytes_ + 2 * bytes <= budget) {
        in_use_bytes_ += 2 * bytes;
        must_make = true;
    }
    return nullptr;
}

std::unique_ptr<Lane> LanePool::acquire(size_t bytes, size_t budget) {
    std::unique_lock lock(m_);
    for (;;) {
        bool must_make = false;
        if (auto lane = take_locked(bytes, budget, must_make))
            return lane;
        if (must_make) {
            lock.unlock();
            try {
                return make(bytes);
            } catch (...) {
                // Out of pinned memory (or streams): where other lanes
                // exist, wait for one of them rather than fail.
                lock.lock();
                if (in_use_bytes_ == 0)
                    throw;
            }
        }
        cv_.wait(lock);
    }
}

std::unique_ptr<Lane> LanePool::try_acquire(size_t bytes, size_t budget) {
    std::unique_lock lock(m_);
    bool must_make = false;
    if (auto lane = take_locked(bytes, budget, must_make))
        return lane;
    if (!must_make)
        return nullptr;
    lock.unlock();
    try {
        return make(bytes);
    } catch (...) {
        return nullptr; // the caller's own lane carries on
    }
}

void LanePool::release(std::unique_ptr<Lane> lane) {
    {
        std::lock_guard lock(m_);
        if (in_use_bytes_ > budget_)
            in_use_bytes_ -= 2 * lane->bytes; // freed below, outside the lock
        else
            idle_.push_back(std::move(lane));
    }
    cv_.notify_all();
}

void LanePool::trim(size_t budget) {
    std::vector<std::unique_ptr<Lane>> drop; // freed outside the lock
    {
        std::lock_guard lock(m_);
        budget_ = budget;
        while (!idle_.empty() && in_use_bytes_ > budget) {
            in_use_bytes_ -= 2 * idle_.back()->bytes;
            drop.push_back(std::move(idle_.back()));
            idle_.pop_back();
        }
    }
    cv_.notify_all();
}

} // namespace phxfs::core
