#include "engine/workers.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

namespace phxfs::core {

namespace {

// One request's shared state: pool workers may pick it up after the caller
// has finished the work, so it lives as long as any reference to it.
struct Task {
    std::function<void()> body;
    std::mutex m;
    std::condition_variable cv;
    unsigned running = 0;
    bool closed = false; // the caller returned: late runs are skipped
};

void run_task(Task &t) {
    {
        std::lock_guard lock(t.m);
        if (t.closed)
            return;
        ++t.running;
    }
    t.body();
    {
        std::lock_guard lock(t.m);
        --t.running;
    }
    t.cv.notify_all();
}

} // namespace

// A pool's queue and workers. Workers hold it by shared_ptr, so a pool may
// go (a device's, in tests) while they finish; they leave once it is gone
// and the queue is empty.
struct WorkerPool::State {
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::shared_ptr<Task>> queue;
    unsigned threads = 0; // detached
    bool stopping = false;

    static void loop(const std::shared_ptr<State> &self) {
        State &s = *self;
        for (;;) {
            std::shared_ptr<Task> task;
            {
                std::unique_lock lock(s.m);
                s.cv.wait(lock, [&] { return s.stopping || !s.queue.empty(); });
                if (s.queue.empty())
                    return; // stopping
                task = std::move(s.queue.front());
                s.queue.pop_front();
            }
            run_task(*task);
        }
    }
};

WorkerPool::WorkerPool() : state_(std::make_shared<State>()) {}

WorkerPool::~WorkerPool() {
    {
        std::lock_guard lock(state_->m);
        state_->stopping = true;
    }
    state_->cv.notify_all();
}

unsigned WorkerPool::threads() const {
    std::lock_guard lock(state_->m);
    return state_->threads;
}

void WorkerPool::run(unsigned width, const std::function<void()> &body) {
    if (width <= 1) {
        body();
        return;
    }
    auto task = std::make_shared<Task>();
    task->body = body;
    const unsigned copies = width - 1;
    {
        std::lock_guard lock(state_->m);
        // Enough workers for the widest request seen; they idle on the queue.
        for (; state_->threads < std::min(copies, 256u); ++state_->threads)
            std::thread([s = state_] { State::loop(s); }).detach();
        for (unsigned i = 0; i < copies; ++i)
            state_->queue.push_back(task);
    }
    state_->cv.notify_all();
    // However the caller's share ends (an exception included), no pool
    // worker may run the body afterwards: it refers to the caller's frame.
    struct Join {
        Task &t;
        ~Join() {
            std::unique_lock lock(t.m);
            t.closed = true;
            t.cv.wait(lock, [this] { return t.running == 0; });
        }
    } join{*task};
    body();
}

namespace {

// The process-wide pool. A child of fork() has none of the parent's
// threads, and the parent's pool may be mid-change (its lock held by a
// thread that does not exist in the child), so the child starts a new pool
// and never touches the old one.
std::atomic<WorkerPool *> the_pool{nullptr};

} // namespace

WorkerPool &shared_workers() {
    static std::once_flag once;
    std::call_once(once, [] { the_pool = new WorkerPool; });
    return *the_pool.load();
}

void run_parallel(unsigned width, const std::function<void()> &body) {
    shared_workers().run(width, body);
}

void workers_after_fork_child() {
    if (the_pool.load())
        the_pool = new WorkerPool; // the old one is left as it is: its threads are gone
}

} // namespace phxfs::core
