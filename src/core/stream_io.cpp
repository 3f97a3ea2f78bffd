// The host half of stream-ordered I/O (stream_io.hpp): records, staging,
// enqueue, and the service threads, which never call CUDA.
#include "core/stream_io.hpp"

#include "core/config.hpp"
#include "core/device.hpp"
#include "core/error.hpp"
#include "core/handle.hpp"
#include "core/request.hpp"
#include "core/spin.hpp"
#include "engine/fileio.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <list>
#include <new>
#include <string>

namespace phxfs::core {

namespace {

// A service thread spins for Options::spin after its last progress, then
// naps, longer each time up to kMaxNap, until a request is queued or a
// stream gets somewhere: a stream held behind long kernels costs little
// CPU, and a request reached after a nap waits kMaxNap at most.
constexpr auto kFirstNap = std::chrono::microseconds(5);
constexpr auto kMaxNap = std::chrono::microseconds(100);
// How often a service thread steps every request it holds, not only each
// stream's oldest (StreamIo::serve); a full pass over the most requests a
// process may queue (4096) takes a few tens of microseconds.
constexpr auto kFullPass = std::chrono::microseconds(200);
// A request's rounds at most: its enqueue queues 3 to 6 stream ops each.
constexpr uint64_t kMaxRounds = 65536;
// Rounds up to this size are copied by the kernel straight from the staging
// across the bus; larger ones go to the device's bounce memory in one copy
// first. The kernel's loads of host memory are uncached 16-byte reads, each
// a read across the bus (65,536 for a 1 MiB round), where one copy-engine
// transfer moves the round at the copy limit.
constexpr size_t kZeroCopyMax = 16 << 10;
constexpr size_t kPage = 4096;

uint32_t load(const uint32_t &w) {
    return __atomic_load_n(&w, __ATOMIC_ACQUIRE);
}
void store(uint32_t &w, uint32_t v) {
    __atomic_store_n(&w, v, __ATOMIC_RELEASE);
}
// Whether a wrapping counter w has reached v (as CU_STREAM_WAIT_VALUE_GEQ).
bool reached(uint32_t w, uint32_t v) {
    return static_cast<int32_t>(w - v) >= 0;
}

// The file's descriptor without O_DIRECT, which a round's pread or pwrite
// of any size and offset needs (the staging is not aligned for O_DIRECT).
int plain_fd(File &f, bool write) {
    f.for_request(write);
    const int fd = f.fd_with(false);
    if (fd < 0)
        fail(EINVAL, std::string("stream-ordered ") + (write ? "writes" : "reads") +
                         " need the file without O_DIRECT: " + f.why_no_twin(false));
    return fd;
}

} // namespace

// A queued request, from enqueue until its stream has passed it; owned by
// its record's service thread after enqueue.
struct StreamIo::Pending {
    enum class Phase { reached, copied, released };
    StreamRequest req;
    void *stream = nullptr; // the caller's, as a key: requests of one go in its order
    uint64_t bounce = 0;    // the device's bounce memory (staging's offsets), or 0
    uint32_t rec = 0;
    size_t most = 0;      // *size_p at enqueue
    size_t round_cap = 0; // bytes a round moves at most
    size_t stage_off = 0, stage_len = 0;
    uint32_t gen0 = 0, rounds = 1, round = 0;
    Phase phase = Phase::reached;
    // At execution (round 0) and after.
    size_t n = 0;
    uint64_t f_off = 0, b_off = 0;
    int err = 0;
    size_t moved = 0;
    int device_id = 0;          // the handle's, for the counters
    uint64_t t0 = 0;            // when the stream got to it
    size_t piece = 0;           // this round's bytes (writes: between ready and copied)
    char *piece_host = nullptr; // where in the staging

    uint32_t last_gen() const { return gen0 + rounds - 1; }
    bool last_round() const { return round + 1 == rounds; }
};

struct StreamIo::Service {
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::unique_ptr<Pending>> incoming;
    std::atomic<bool> has_incoming{false};
    bool stopping = false;
    std::thread thread;
};

StreamIo::StreamIo(std::unique_ptr<StreamOrder> order, const Options &opt)
    : order_(std::move(order)), opt_(opt) {
    if (opt_.records == 0 || opt_.threads == 0 || opt_.round_bytes < kPage ||
        opt_.staging_bytes < align_up(opt_.round_bytes + 16, kPage))
        fail(EINVAL, "stream I/O: the staging must hold one round (" +
                         std::to_string(align_up(opt_.round_bytes + 16, kPage)) + " bytes)");
    const size_t staging = staging_size();
    const size_t words = align_up(size_t{opt_.records} * sizeof(StreamRecord), kPage);
    auto *p = static_cast<char *>(order_->alloc_shared(words + staging));
    records_ = reinterpret_cast<StreamRecord *>(p);
    staging_ = p + words;
    gens_.assign(opt_.records, 0);
    free_records_.reserve(opt_.records);
    for (unsigned i = opt_.records; i > 0; --i)
        free_records_.push_back(i - 1);
    free_extents_.emplace(0, staging);
    for (unsigned t = 0; t < opt_.threads; ++t) {
        auto sv = std::make_unique<Service>();
        Service *raw = sv.get();
        services_.push_back(std::move(sv));
        raw->thread = std::thread([this, raw] { serve(*raw); });
    }
}

StreamIo::~StreamIo() {
    for (auto &sv : services_) {
        {
            std::lock_guard lock(sv->m);
            sv->stopping = true;
        }
        sv->cv.notify_all();
    }
    for (auto &sv : services_)
        sv->thread.join();
}

// The staging's bytes: the configured size in whole pages.
size_t StreamIo::staging_size() const {
    return align_down(opt_.staging_bytes, kPage);
}

void StreamIo::register_stream(void *stream) {
    order_->prepare(stream);
    (void)order_->bounce(stream, staging_size());
}

bool StreamIo::reserve(size_t bytes, size_t &off) {
    for (auto it = free_extents_.begin(); it != free_extents_.end(); ++it) {
        if (it->second < bytes)
            continue;
        off = it->first;
        const size_t left = it->second - bytes;
        free_extents_.erase(it);
        if (left)
            free_extents_.emplace(off + bytes, left);
        return true;
    }
    return false;
}

void StreamIo::unreserve(size_t off, size_t bytes) {
    auto next = free_extents_.lower_bound(off);
    if (next != free_extents_.end() && off + bytes == next->first) {
        bytes += next->second;
        next = free_extents_.erase(next);
    }
    if (next != free_extents_.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second == off) {
            prev->second += bytes;
            return;
        }
    }
    free_extents_.emplace(off, bytes);
}

size_t StreamIo::free_staging_bytes() {
    std::lock_guard lock(m_);
    size_t n = 0;
    for (const auto &[off, len] : free_extents_)
        n += len;
    return n;
}

unsigned StreamIo::free_records() {
    std::lock_guard lock(m_);
    return static_cast<unsigned>(free_records_.size());
}

void StreamIo::enqueue(const StreamRequest &req, void *stream) {
    if (!req.buf || !req.size_p || !req.f_offset_p || !req.result_p)
        fail(EINVAL, "buffer, size, file offset and result pointers must not be NULL");
    // GPU work still queued may be writing it: one whole load, old or new.
    const size_t most = __atomic_load_n(req.size_p, __ATOMIC_RELAXED);
    if (most > static_cast<uint64_t>(std::numeric_limits<off_t>::max()))
        fail(EINVAL, "*size_p (the request's most bytes) beyond the largest off_t");
    int device_id = 0;
    {
        FileHandle::Use h = handles().use(req.handle); // EBADF for a handle not open
        check_access(h->file().info(), req.write);     // EBADF, EINVAL (O_APPEND write)
        device_id = h->device_id();
    }
    auto p = std::make_unique<Pending>();
    p->req = req;
    p->stream = stream;
    p->device_id = device_id;
    p->most = most;
    p->round_cap = std::clamp<size_t>(most, 1, opt_.round_bytes);
    const uint64_t rounds = most ? (most + p->round_cap - 1) / p->round_cap : 1;
    if (rounds > kMaxRounds)
        fail(EINVAL, "a stream request moves " + std::to_string(kMaxRounds * opt_.round_bytes) +
                         " bytes at most (*size_p at enqueue is " + std::to_string(most) + ")");
    p->rounds = static_cast<uint32_t>(rounds);
    p->stage_len = align_up(p->round_cap + 16, kPage); // +16: the kernel's co-alignment

    order_->prepare(stream); // all that touches the GPU, before anything is queued
    if (p->round_cap > kZeroCopyMax)
        p->bounce = order_->bounce(stream, staging_size());

    {
        std::lock_guard lock(m_);
        if (free_records_.empty())
            fail(EAGAIN, std::to_string(opt_.records) +
                             " stream-ordered requests are pending: let their streams run first");
        if (!reserve(p->stage_len, p->stage_off))
            fail(EAGAIN, "stream-ordered I/O staging in use (" +
                             std::to_string(opt_.staging_bytes) +
                             " bytes, PHXFS_STREAM_STAGING): let earlier requests' streams run "
                             "first");
        p->rec = free_records_.back();
        free_records_.pop_back();
        p->gen0 = gens_[p->rec] + 1;
        gens_[p->rec] += p->rounds;
    }

    StreamRecord &r = records_[p->rec];
    unsigned queued = 0;
    try {
        char *const stage = staging_ + p->stage_off;
        const uint64_t bounce = p->bounce ? p->bounce + p->stage_off : 0;
        for (uint32_t k = 0; k < p->rounds; ++k) {
            const uint32_t g = p->gen0 + k;
            order_->write(stream, &r.reached, g);
            ++queued;
            order_->wait(stream, &r.ready, g);
            if (bounce && !req.write)
                order_->to_device(stream, bounce, stage, p->stage_len);
            order_->copy(stream, &r, g, p->round_cap);
            if (req.write) {
                if (bounce)
                    order_->to_host(stream, stage, bounce, p->stage_len);
                order_->write(stream, &r.copied, g);
                order_->wait(stream, &r.done, g);
            }
        }
        if (!req.write)
            order_->write(stream, &r.released, p->last_gen());
    } catch (...) {
        if (queued == 0) { // nothing on the stream: as if never called
            std::lock_guard lock(m_);
            unreserve(p->stage_off, p->stage_len);
            free_records_.push_back(p->rec);
            throw;
        }
        // Part of it is on the stream: release every wait it queued, let its
        // kernels copy nothing, and never reuse the record or the staging.
        __atomic_store_n(&r.desc_gen, p->gen0 - 1, __ATOMIC_RELEASE);
        store(r.ready, p->last_gen());
        store(r.done, p->last_gen());
        throw;
    }

    // A stream's requests go to one service thread, which steps them in
    // order and is still spinning from one when the stream reaches the next.
    const auto key = reinterpret_cast<uintptr_t>(stream) * 0x9E3779B97F4A7C15ull;
    Service &sv = *services_[(key >> 32) % services_.size()];
    {
        std::lock_guard lock(sv.m);
        sv.incoming.push_back(std::move(p));
        sv.has_incoming.store(true, std::memory_order_release);
    }
    sv.cv.notify_one();
}

// Steps the requests of q (one stream key's, oldest first) as far as they
// go: only the first (heads_only), or all; finished ones leave q. Returns
// whether any made progress.
bool StreamIo::step_queue(std::deque<std::unique_ptr<Pending>> &q, bool heads_only) {
    bool progress = false;
    auto run = [&](Pending &p) {
        bool finished = false;
        while (!finished && step(p, finished))
            progress = true;
        return finished;
    };
    if (heads_only) {
        while (!q.empty() && run(*q.front()))
            q.pop_front();
    } else {
        std::erase_if(q, [&](std::unique_ptr<Pending> &p) { return run(*p); });
    }
    return progress;
}

// A stream's requests are queued in the order they were enqueued on it, and
// as a rule only the oldest can be where the stream is (the next one's first
// op comes after this one's last), so a pass steps each stream's first
// request: its cost does not grow with the requests queued behind. Not
// always: the key is the stream's handle, which may name several streams
// (each thread's per-thread default stream, the legacy stream of each
// context), and two threads enqueuing on one stream at once may queue their
// ops in one order and their requests here in the other. So a full pass
// steps every request at least every kFullPass, busy or not: a request held
// behind another under its key still moves, kFullPass (or a nap) later at
// most, whatever the thread's other streams do.
void StreamIo::serve(Service &sv) {
    std::list<std::pair<void *, std::deque<std::unique_ptr<Pending>>>> streams;
    auto last_progress = std::chrono::steady_clock::now();
    auto last_full = last_progress;
    auto nap = std::chrono::duration_cast<std::chrono::nanoseconds>(kFirstNap);
    auto take = [&] {
        for (auto &p : sv.incoming) {
            auto it = std::find_if(streams.begin(), streams.end(),
                                   [&](const auto &e) { return e.first == p->stream; });
            if (it == streams.end()) {
                streams.emplace_back(p->stream, std::deque<std::unique_ptr<Pending>>{});
                it = std::prev(streams.end());
            }
            it->second.push_back(std::move(p));
        }
        sv.incoming.clear();
        sv.has_incoming.store(false, std::memory_order_relaxed);
    };
    auto pass = [&](bool heads_only) {
        bool progress = false;
        for (auto &e : streams)
            progress |= step_queue(e.second, heads_only);
        std::erase_if(streams, [](const auto &e) { return e.second.empty(); });
        return progress;
    };
    for (;;) {
        if (streams.empty()) {
            std::unique_lock lock(sv.m);
            sv.cv.wait(lock, [&] { return sv.stopping || !sv.incoming.empty(); });
            if (sv.incoming.empty())
                return; // stopping, nothing pending
            take();
        } else if (sv.has_incoming.load(std::memory_order_acquire)) {
            std::lock_guard lock(sv.m);
            take();
        }
        auto now = std::chrono::steady_clock::now();
        bool progress = pass(true);
        if (!streams.empty() && now - last_full >= kFullPass) {
            progress |= pass(false);
            last_full = now;
        }
        if (progress) {
            last_progress = now;
            nap = kFirstNap;
            continue;
        }
        if (streams.empty() || now - last_progress < opt_.spin) {
            cpu_relax();
            continue;
        }
        std::unique_lock lock(sv.m);
        sv.cv.wait_for(lock, nap, [&] { return !sv.incoming.empty(); });
        nap = std::min<std::chrono::nanoseconds>(nap * 2, kMaxNap);
    }
}

bool StreamIo::step(Pending &p, bool &finished) {
    StreamRecord &r = records_[p.rec];
    const uint32_t gen = p.gen0 + p.round;
    switch (p.phase) {
    case Pending::Phase::reached:
        if (!reached(load(r.reached), gen))
            return false;
        if (p.round == 0)
            begin(p);
        if (p.req.write) {
            fill_write(p, gen);
            store(r.ready, gen);
            p.phase = Pending::Phase::copied;
            return true;
        }
        fill_read(p, gen);
        if (p.last_round())
            report(p);
        store(r.ready, gen);
        if (p.last_round())
            p.phase = Pending::Phase::released;
        else
            ++p.round;
        return true;
    case Pending::Phase::copied:
        if (!reached(load(r.copied), gen))
            return false;
        if (p.piece && !p.err) {
            try {
                FileHandle::Use h = handles().use(p.req.handle);
                pwrite_full(plain_fd(h->file(), true), p.piece_host, p.piece,
                            p.f_off + uint64_t{p.round} * p.round_cap);
                p.moved += p.piece;
            } catch (...) {
                p.err = current_failure().err;
            }
        }
        if (p.last_round())
            report(p);
        store(r.done, gen);
        if (p.last_round()) {
            release(p);
            finished = true;
        } else {
            ++p.round;
            p.phase = Pending::Phase::reached;
        }
        return true;
    case Pending::Phase::released:
        if (!reached(load(r.released), p.last_gen()))
            return false;
        release(p);
        finished = true;
        return true;
    }
    return false;
}

// The request's outcome: its result to the caller, and to the counters of
// its handle's device, on the compat path (it went through pinned staging).
void StreamIo::report(Pending &p) {
    *p.req.result_p = p.err ? -static_cast<ssize_t>(p.err) : static_cast<ssize_t>(p.moved);
    Device &d = device(p.device_id);
    if (p.err)
        d.count_error();
    else
        d.count(PHXFS_PATH_COMPAT, p.req.write, p.moved, now_ns() - p.t0);
}

void StreamIo::begin(Pending &p) {
    // The stream is here: the values behind the pointers now count.
    p.t0 = now_ns();
    const size_t n = *p.req.size_p;
    const off_t f_off = *p.req.f_offset_p;
    const off_t b_off = p.req.buf_offset_p ? *p.req.buf_offset_p : 0;
    try {
        if (f_off < 0 || b_off < 0)
            fail(EINVAL, "negative offset");
        if (n > p.most)
            fail(EINVAL, "*size_p grew past its value at enqueue");
        check_io_range(static_cast<uint64_t>(b_off), n, static_cast<uint64_t>(f_off));
        p.n = n;
        p.f_off = static_cast<uint64_t>(f_off);
        p.b_off = static_cast<uint64_t>(b_off);
    } catch (...) {
        p.err = current_failure().err;
    }
}

namespace {

// This round's part of a request of n bytes: [start, start + len).
size_t round_len(size_t n, size_t start, size_t cap) {
    return start < n ? std::min(cap, n - start) : 0;
}

} // namespace

void StreamIo::fill_read(Pending &p, uint32_t gen) {
    StreamRecord &r = records_[p.rec];
    const size_t start = size_t{p.round} * p.round_cap;
    size_t len = p.err ? 0 : round_len(p.n, start, p.round_cap);
    const uint64_t dst = reinterpret_cast<uint64_t>(p.req.buf) + p.b_off + start;
    // The staging starts at dst's offset in 16 bytes: the kernel then copies
    // whole 16-byte words whatever the buffer's alignment.
    char *host = staging_ + p.stage_off + (dst & 15);
    if (len) {
        try {
            FileHandle::Use h = handles().use(p.req.handle);
            const size_t got = pread_full(plain_fd(h->file(), false), host, len, p.f_off + start);
            if (got < len)
                p.n = start + got; // end of file: later rounds move nothing
            len = got;
            p.moved += got;
        } catch (...) {
            p.err = current_failure().err;
            len = 0;
        }
    }
    r.dst = dst;
    r.src = staging_address(p, host);
    r.bytes = len;
    __atomic_store_n(&r.desc_gen, gen, __ATOMIC_RELEASE);
}

void StreamIo::fill_write(Pending &p, uint32_t gen) {
    StreamRecord &r = records_[p.rec];
    const size_t start = size_t{p.round} * p.round_cap;
    const size_t len = p.err ? 0 : round_len(p.n, start, p.round_cap);
    const uint64_t src = reinterpret_cast<uint64_t>(p.req.buf) + p.b_off + start;
    p.piece_host = staging_ + p.stage_off + (src & 15);
    p.piece = len;
    r.dst = staging_address(p, p.piece_host);
    r.src = src;
    r.bytes = len;
    __atomic_store_n(&r.desc_gen, gen, __ATOMIC_RELEASE);
}

// The address the kernel uses for host, in p's staging: its place in the
// bounce memory, or where it is across the bus.
uint64_t StreamIo::staging_address(const Pending &p, const char *host) const {
    return p.bounce ? p.bounce + static_cast<uint64_t>(host - staging_)
                    : order_->device_address(host);
}

void StreamIo::release(Pending &p) {
    std::lock_guard lock(m_);
    unreserve(p.stage_off, p.stage_len);
    free_records_.push_back(p.rec);
}

namespace {

std::mutex cuda_mutex;
std::atomic<StreamIo *> cuda_io{nullptr};

StreamIo::Options options_from_env() {
    StreamIo::Options opt;
    if (const char *s = std::getenv("PHXFS_STREAM_STAGING"); s && *s) {
        char *end = nullptr;
        const unsigned long long v = std::strtoull(s, &end, 10);
        if (*end || v < (8u << 20) || v > (size_t{64} << 30))
            fail(EINVAL, std::string("PHXFS_STREAM_STAGING must be bytes from 8 MiB to 64 GiB, "
                                     "not \"") +
                             s + "\"");
        opt.staging_bytes = v;
    }
    return opt;
}

} // namespace

StreamIo &cuda_stream_io() {
    if (StreamIo *s = cuda_io.load(std::memory_order_acquire))
        return *s;
    std::lock_guard lock(cuda_mutex);
    if (!cuda_io.load())
        cuda_io = new StreamIo(make_cuda_stream_order(), options_from_env()); // never deleted
    return *cuda_io.load();
}

void stream_io_after_fork_child() {
    cuda_io = nullptr; // the parent's threads and shared memory are not the child's
    new (&cuda_mutex) std::mutex;
}

} // namespace phxfs::core
