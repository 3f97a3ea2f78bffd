#include "core/stream_io.hpp"

#include "core/batch.hpp"
#include "core/error.hpp"
#include "core/handle.hpp"
#include "memory/memory.hpp"

#include <algorithm>
#include <chrono>
#include <new>

namespace phxfs::core {

namespace {

// The poller spins this long after its last progress (a stream that has
// just run one request usually reaches the next within microseconds), then
// sleeps, longer each time up to kMaxNap, until a request is queued or a
// stream gets to one: a stream waiting behind long kernels costs little CPU.
constexpr auto kSpin = std::chrono::microseconds(50);
constexpr auto kFirstNap = std::chrono::microseconds(10);
constexpr auto kMaxNap = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

uint32_t load_word(const uint32_t *w) {
    return __atomic_load_n(w, __ATOMIC_ACQUIRE);
}

void store_word(uint32_t *w, uint32_t v) {
    __atomic_store_n(w, v, __ATOMIC_RELEASE);
}

} // namespace

StreamIo::StreamIo(std::unique_ptr<StreamOrder> order, unsigned capacity)
    : order_(std::move(order)), ops_(capacity) {
    words_ = order_->alloc_words(2 * size_t{capacity});
    batch_ = std::make_unique<Batch>(capacity, complete);
    free_.reserve(capacity);
    queued_.reserve(capacity);
    for (unsigned i = capacity; i > 0; --i) {
        ops_[i - 1].owner = this;
        ops_[i - 1].index = i - 1;
        free_.push_back(i - 1);
    }
    poller_ = std::thread([this] { poller(); });
}

StreamIo::~StreamIo() {
    {
        std::lock_guard lock(m_);
        stopping_ = true;
    }
    cv_.notify_all();
    poller_.join();
    batch_.reset(); // waits for what runs
}

void StreamIo::enqueue(const StreamRequest &req, void *stream) {
    if (!req.size_p || !req.f_offset_p || !req.result_p)
        fail(EINVAL, "size, file offset and result pointers must not be NULL");
    handles().use(req.handle); // EBADF now for a handle that is not open
    uint32_t i;
    {
        std::lock_guard lock(m_);
        if (free_.empty())
            fail(EAGAIN, std::to_string(ops_.size()) +
                             " stream-ordered requests are queued: let their streams run first");
        i = free_.back();
        free_.pop_back();
    }
    Op &op = ops_[i];
    op.req = req;
    op.orphan = false;
    ++op.gen; // past the words' last values (0 at first): the stream waits for it
    try {
        order_->signal(stream, reached(i), op.gen);
    } catch (...) {
        std::lock_guard lock(m_);
        free_.push_back(i);
        throw;
    }
    try {
        order_->wait(stream, done(i), op.gen);
    } catch (...) {
        // The stream will signal but not wait: the request must not run
        // unordered. The poller frees its place when the signal comes.
        op.orphan = true;
        {
            std::lock_guard lock(m_);
            queued_.push_back(i);
            has_queued_.store(true, std::memory_order_release);
        }
        cv_.notify_one();
        throw;
    }
    {
        std::lock_guard lock(m_);
        queued_.push_back(i);
        has_queued_.store(true, std::memory_order_release);
    }
    cv_.notify_one();
}

void StreamIo::poller() {
    std::vector<uint32_t> watch; // queued requests whose streams have not got to them
    watch.reserve(ops_.size());
    auto last_progress = std::chrono::steady_clock::now();
    auto nap = kFirstNap;
    for (;;) {
        const bool nothing_new = !has_queued_.load(std::memory_order_acquire);
        const bool spinning = std::chrono::steady_clock::now() - last_progress < kSpin;
        if (nothing_new && !watch.empty() && spinning) {
            cpu_relax();
        } else {
            std::unique_lock lock(m_);
            auto wake = [this] { return stopping_ || !queued_.empty(); };
            if (watch.empty())
                cv_.wait(lock, wake);
            else if (nothing_new && !spinning) {
                cv_.wait_for(lock, nap, wake);
                nap = std::min(nap * 2, std::chrono::duration_cast<decltype(nap)>(kMaxNap));
            }
            if (stopping_)
                return;
            watch.insert(watch.end(), queued_.begin(), queued_.end());
            queued_.clear();
            has_queued_.store(false, std::memory_order_relaxed);
        }
        if (start_reached(watch)) {
            last_progress = std::chrono::steady_clock::now();
            nap = kFirstNap;
        }
    }
}

size_t StreamIo::start_reached(std::vector<uint32_t> &watch) {
    thread_local std::vector<phxfs_io> ios;
    ios.clear();
    size_t started = 0;
    auto reached_now = [&](uint32_t i) {
        Op &op = ops_[i];
        if (load_word(reached(i)) != op.gen)
            return false;
        ++started;
        if (op.orphan) {
            std::lock_guard lock(m_);
            free_.push_back(i);
            return true;
        }
        // The stream is here: the values behind the pointers now count.
        const StreamRequest &r = op.req;
        const size_t n = *r.size_p;
        const off_t f_off = *r.f_offset_p;
        const off_t b_off = r.buf_offset_p ? *r.buf_offset_p : 0;
        if (f_off < 0 || b_off < 0) {
            complete(&op, -1, EINVAL, "negative offset");
            return true;
        }
        ios.push_back(phxfs_io{reinterpret_cast<phxfs_file_t>(r.handle),
                               r.write ? PHXFS_OP_WRITE : PHXFS_OP_READ, 0, r.buf,
                               static_cast<uint64_t>(b_off), n, static_cast<uint64_t>(f_off), &op});
        return true;
    };
    watch.erase(std::remove_if(watch.begin(), watch.end(), reached_now), watch.end());
    if (!ios.empty())
        batch_->submit(ios.data(), static_cast<unsigned>(ios.size())); // never more than its depth
    return started;
}

void StreamIo::complete(void *user_data, int64_t result, int err, const std::string &) {
    Op &op = *static_cast<Op *>(user_data);
    StreamIo &self = *op.owner;
    *op.req.result_p = err ? -static_cast<ssize_t>(err) : static_cast<ssize_t>(result);
    // The place is free before the stream goes on, so a caller that syncs
    // with the stream finds it free. Its next use has a greater gen, which
    // lets this stream go on too should it not have looked at done yet.
    const uint32_t i = op.index, gen = op.gen;
    {
        std::lock_guard lock(self.m_);
        self.free_.push_back(i);
    }
    store_word(self.done(i), gen); // the stream goes on
}

namespace {

std::mutex cuda_mutex;
std::atomic<StreamIo *> cuda_io{nullptr};

} // namespace

StreamIo &cuda_stream_io() {
    if (StreamIo *s = cuda_io.load(std::memory_order_acquire))
        return *s;
    std::lock_guard lock(cuda_mutex);
    if (!cuda_io.load())
        cuda_io = new StreamIo(make_cuda_stream_order()); // lives as long as the process
    return *cuda_io.load();
}

void stream_io_after_fork_child() {
    cuda_io = nullptr; // the parent's poller and words are not ours
    new (&cuda_mutex) std::mutex;
}

} // namespace phxfs::core
