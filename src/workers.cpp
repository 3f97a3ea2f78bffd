#include "workers.hpp"

#include "no_destructor.hpp"

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

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

class Pool {
  public:
    void post(const std::shared_ptr<Task> &task, unsigned copies) {
        {
            std::lock_guard lock(m_);
            while (threads_.size() < want_threads(copies))
                threads_.emplace_back([this] { loop(); });
            for (unsigned i = 0; i < copies; ++i)
                queue_.push_back(task);
        }
        cv_.notify_all();
    }

  private:
    // Enough workers for the widest request seen; they idle on the queue.
    size_t want_threads(unsigned copies) const {
        return std::max<size_t>(threads_.size(), std::min<size_t>(copies, 256));
    }

    void loop() {
        for (;;) {
            std::shared_ptr<Task> task;
            {
                std::unique_lock lock(m_);
                cv_.wait(lock, [this] { return !queue_.empty(); });
                task = std::move(queue_.front());
                queue_.pop_front();
            }
            run(*task);
        }
    }

    static void run(Task &t) {
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

    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Task>> queue_;
    std::vector<std::thread> threads_; // detached at exit with the process
};

Pool &pool() {
    static NoDestructor<Pool> p;
    return *p;
}

} // namespace

void run_parallel(unsigned width, const std::function<void()> &body) {
    if (width <= 1) {
        body();
        return;
    }
    auto task = std::make_shared<Task>();
    task->body = body;
    pool().post(task, width - 1);
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

} // namespace phxfs::core
