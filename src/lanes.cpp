#include "lanes.hpp"

namespace phxfs::core {

// Makes a lane whose budget take_locked() reserved; gives the budget back if
// the allocation fails.
std::unique_ptr<Lane> LanePool::make(size_t bytes) {
    try {
        auto lane = std::make_unique<Lane>();
        lane->bytes = bytes;
        lane->region = backend_.alloc_staging(2 * bytes);
        lane->stream = backend_.make_stream();
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
        if (must_make)
            break;
        cv_.wait(lock);
    }
    lock.unlock();
    return make(bytes);
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
        idle_.push_back(std::move(lane));
    }
    cv_.notify_all();
}

void LanePool::trim() {
    std::vector<std::unique_ptr<Lane>> drop;
    {
        std::lock_guard lock(m_);
        for (auto &l : idle_)
            in_use_bytes_ -= 2 * l->bytes;
        drop.swap(idle_);
    }
    cv_.notify_all();
}

} // namespace phxfs::core
