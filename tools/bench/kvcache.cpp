// kvcache.cpp - phxfs-bench -I kvcache (see kvcache.hpp).
#include "kvcache.hpp"

#include "batch_io.hpp"
#include "cufile_api.hpp"
#include "datafile.hpp"
#include "memory.hpp"
#include "pattern.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>

namespace phxbench {

namespace {

// A number in [0, n) from a seeded generator: the same sequence on every
// platform (no std:: distribution in between).
uint64_t below(std::mt19937_64 &rng, uint64_t n) {
    return rng() % n;
}

// Zipf popularity over n ranks: rank r (0 the most popular) is taken with
// probability proportional to 1 / (r + 1)^s.
class Zipf {
  public:
    Zipf(unsigned n, double s) : cdf_(n) {
        double sum = 0;
        for (unsigned r = 0; r < n; ++r)
            cdf_[r] = sum += std::pow(r + 1.0, -s);
        for (double &c : cdf_)
            c /= sum;
    }
    unsigned operator()(std::mt19937_64 &rng) const {
        const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53; // [0, 1)
        const auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
        return static_cast<unsigned>(std::min<size_t>(it - cdf_.begin(), cdf_.size() - 1));
    }

  private:
    std::vector<double> cdf_;
};

// Where the store's blocks are: chunks of chunk_blocks blocks, in one file
// or a file each; prefixes are runs of chunks in a seeded order.
class Store {
  public:
    explicit Store(const Options &o)
        : kv_(o.kv), root_(o.file), chunks_(o.kv.store_blocks / o.kv.chunk_blocks),
          chunk_bytes_(o.kv.chunk_blocks * o.kv.block_bytes()), order_(chunks_) {
        std::iota(order_.begin(), order_.end(), 0u);
        std::mt19937_64 rng(kv_.seed);
        for (size_t i = order_.size(); i > 1; --i) // Fisher-Yates
            std::swap(order_[i - 1], order_[below(rng, i)]);
    }
    unsigned files() const { return kv_.chunk_files ? chunks_ : 1; }
    std::string path(unsigned k) const {
        if (!kv_.chunk_files)
            return root_;
        char name[32];
        std::snprintf(name, sizeof name, "/chunk-%06u.kv", k);
        return root_ + name;
    }
    uint64_t bytes() const { return chunks_ * chunk_bytes_; }
    uint64_t file_bytes() const { return kv_.chunk_files ? chunk_bytes_ : bytes(); }
    // The store offset of file k's first byte.
    uint64_t base(unsigned k) const { return uint64_t{k} * file_bytes(); }
    // (file, offset in it) of a store offset.
    std::pair<unsigned, uint64_t> locate(uint64_t store_off) const {
        if (!kv_.chunk_files)
            return {0, store_off};
        return {static_cast<unsigned>(store_off / chunk_bytes_), store_off % chunk_bytes_};
    }
    // The store block holding block i of prefix p: the prefixes start evenly
    // spread over the chunk order and run on through it (wrapping), so that
    // neighbours share chunks as prompts share a prefix.
    uint64_t block_of(unsigned p, unsigned i) const {
        const uint64_t start = uint64_t{p} * chunks_ / kv_.prefixes;
        const uint64_t chunk = order_[(start + i / kv_.chunk_blocks) % chunks_];
        return chunk * kv_.chunk_blocks + i % kv_.chunk_blocks;
    }

  private:
    KvOptions kv_;
    std::string root_;
    unsigned chunks_;
    uint64_t chunk_bytes_;
    std::vector<unsigned> order_; // the chunks in a seeded order
};

// What every thread of a run shares.
struct KvShared : RunControl {
    const Options &o;
    const Store &store;
    std::vector<int> fds;                          // one per store file
    std::vector<phxcufile::CUfileHandle_t> cufile; // -x cufile: their handles

    KvShared(const Options &opt, const Store &st) : RunControl(opt.threads), o(opt), store(st) {}
};

// The transfer unit: a layer of a block, or a whole block.
uint64_t unit_bytes(const KvOptions &kv) {
    return kv.whole_blocks ? kv.block_bytes() : kv.layer_bytes();
}

// One thread: its pool, its batch, its requests. With store and verify,
// marks in `written` every store unit (index: store offset / unit) it wrote.
void kv_worker(KvShared &s, unsigned t, ThreadResult &r, std::vector<uint8_t> &written) {
    const Options &o = s.o;
    const KvOptions &kv = o.kv;
    const bool cufile = o.path == PathType::cufile;
    const uint64_t lb = kv.layer_bytes(), bb = kv.block_bytes(), unit = unit_bytes(kv);
    const uint64_t pool_bytes = uint64_t{kv.pool_blocks} * bb;
    const unsigned n_pieces = kv.pieces();
    std::optional<IoBuffer> pool;
    std::optional<BatchIo> bio;
    HostBuffer scratch; // --verify on the GPU: the pool's host image
    const phxcufile::Api *cf = cufile ? phxcufile::api() : nullptr;
    bool cf_registered = false;
    std::vector<Piece> pieces(n_pieces);
    std::vector<uint64_t> store_off(n_pieces); // of each piece
    std::vector<unsigned> slots(kv.pool_blocks);
    std::iota(slots.begin(), slots.end(), 0u);
    std::mt19937_64 rng(kv.seed * 0x9e3779b97f4a7c15ull + t + 1);
    const Zipf zipf(kv.zipf ? kv.prefixes : 1, kv.zipf_s);
    try {
        pool.emplace(o.device, o.mem, pool_bytes, !cufile);
        if (!pool->why_unregistered().empty() && t == 0)
            s.set_note("pool not registered: " + pool->why_unregistered());
        if (cf && pool->on_gpu()) {
            const auto e = cf->cuFileBufRegister(pool->data(), pool_bytes, 0);
            cf_registered = e.err == phxcufile::CU_FILE_SUCCESS;
            if (!cf_registered && t == 0)
                s.set_note("pool not registered with cuFile (cuFileBufRegister of " +
                           human_bytes(pool_bytes) + ": " + phxcufile::error_text(e) + ")");
        }
        if (o.verify && pool->on_gpu())
            scratch = alloc_host(pool_bytes);
        bio.emplace(o.device, pool->data(), s.fds, kv.store,
                    o.batch ? o.batch : kv.pieces_per_submit(),
                    cufile ? std::span<const phxcufile::CUfileHandle_t>(s.cufile)
                           : std::span<const phxcufile::CUfileHandle_t>{});
    } catch (const std::exception &e) {
        s.fail(e.what());
    }
    const phxcufile::BufDeregister cf_dereg{cf, cf_registered ? pool->data() : nullptr};

    // The pool's bytes as the host sees them (a copy for GPU memory).
    const auto host_view = [&]() -> uint8_t * {
        return scratch ? scratch.get() : static_cast<uint8_t *>(pool->data());
    };
    const auto request = [&](bool timed) {
        const unsigned prefix =
            kv.zipf ? zipf(rng) : static_cast<unsigned>(below(rng, kv.prefixes));
        for (unsigned i = 0; i < kv.blocks; ++i) // N distinct free slots
            std::swap(slots[i], slots[i + below(rng, kv.pool_blocks - i)]);
        for (unsigned i = 0; i < kv.blocks; ++i) {
            const uint64_t block = s.store.block_of(prefix, i);
            for (unsigned l = 0; l < (kv.whole_blocks ? 1 : kv.layers); ++l) {
                const size_t k = size_t{l} * kv.blocks + i; // layer by layer
                store_off[k] = block * bb + l * lb;
                const auto [file, file_off] = s.store.locate(store_off[k]);
                const uint64_t buf_off = kv.whole_blocks
                                             ? uint64_t{slots[i]} * bb
                                             : (uint64_t{l} * kv.pool_blocks + slots[i]) * lb;
                pieces[k] = {file, file_off, buf_off, unit};
            }
        }
        if (o.verify) { // untimed: a restore must fill the pool, a store writes the pattern
            uint8_t *h = host_view();
            if (kv.store)
                for (size_t k = 0; k < n_pieces; ++k)
                    fill_pattern(h + pieces[k].buf_off, unit, store_off[k]);
            else
                std::memset(h, 0, pool_bytes);
            if (scratch)
                pool->from_host(scratch.get(), 0, pool_bytes);
        }
        const auto done = [&](size_t k, int64_t result, const char *error) {
            if (result != static_cast<int64_t>(unit))
                throw std::runtime_error(
                    std::string(kv.store ? "store" : "restore") + " of " + std::to_string(unit) +
                    " bytes at " + s.store.path(pieces[k].file) + " offset " +
                    std::to_string(pieces[k].file_off) + ": " + (result < 0 ? error : "short"));
        };
        const auto t0 = Clock::now();
        if (kv.per_layer)
            for (unsigned l = 0; l < kv.layers; ++l)
                bio->run(std::span(pieces).subspan(size_t{l} * kv.blocks, kv.blocks), done);
        else
            bio->run(pieces, done);
        const auto ns = static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
        if (timed) {
            r.latency_ns.push_back(ns);
            r.io_ns += ns;
            r.bytes += n_pieces * unit;
            r.blocks += kv.blocks;
            s.progress.fetch_add(n_pieces * unit, std::memory_order_relaxed);
        }
        if (o.verify && kv.store) {
            for (uint64_t off : store_off)
                written[off / unit] = 1;
        } else if (o.verify) {
            if (scratch)
                pool->to_host(scratch.get(), 0, pool_bytes);
            const uint8_t *h = host_view();
            for (size_t k = 0; k < n_pieces; ++k) {
                const uint8_t *p = h + pieces[k].buf_off;
                const size_t mm = first_mismatch(p, unit, store_off[k]);
                if (mm == unit)
                    continue;
                char d[320];
                std::snprintf(d, sizeof d,
                              "store block %llu layer %zu, %s offset %llu, pool offset %llu: got "
                              "0x%02x, the pattern has 0x%02x",
                              static_cast<unsigned long long>(store_off[k] / bb),
                              kv.whole_blocks ? size_t{0} : k / kv.blocks,
                              s.store.path(pieces[k].file).c_str(),
                              static_cast<unsigned long long>(pieces[k].file_off + mm),
                              static_cast<unsigned long long>(pieces[k].buf_off + mm), p[mm],
                              pattern_byte(store_off[k] + mm));
                s.mismatch_at(store_off[k] + mm, d);
            }
        }
    };

    if (!s.stop) {
        try {
            request(false); // warm-up: first use of the batch, the pool's mappings
        } catch (const std::exception &e) {
            s.fail(e.what());
        }
    }
    s.ready.count_down();
    s.start.wait();
    try {
        for (unsigned n = 0; !s.stop; ++n) {
            if (o.duration_s ? s.past_deadline() : n >= kv.requests)
                break;
            request(true);
        }
    } catch (const std::exception &e) {
        s.fail(e.what());
    }
}

// After a verified store run: every unit written must hold the pattern; the
// rest (zeroed before the run) gets it back. Returns the first wrong store
// offset.
std::optional<uint64_t> check_stored(const Store &store, const std::vector<int> &fds,
                                     const std::vector<uint8_t> &written, uint64_t unit) {
    for (size_t u = 0; u < written.size(); ++u) {
        const auto [k, off] = store.locate(u * unit);
        if (!written[u])
            write_pattern(fds[k], off, off + unit, store.base(k));
        else if (auto mm = check_pattern(fds[k], off, off + unit, store.base(k)))
            return store.base(k) + *mm;
    }
    return std::nullopt;
}

} // namespace

std::vector<std::string> prepare_kv_store(const Options &o) {
    const Store store(o);
    std::vector<std::string> made;
    struct stat st {};
    const bool dir_exists = ::stat(o.file.c_str(), &st) == 0;
    if (o.kv.chunk_files && !dir_exists && ::mkdir(o.file.c_str(), 0755) != 0)
        throw std::runtime_error(errno_msg("mkdir " + o.file));
    for (unsigned k = 0; k < store.files(); ++k) {
        bool created = false;
        prepare_file(store.path(k), store.file_bytes(), o.verify, created, store.base(k));
        if (created)
            made.push_back(store.path(k));
    }
    if (o.kv.chunk_files && !dir_exists)
        made.push_back(o.file);
    return made;
}

std::string kv_describe(const Options &o) {
    const KvOptions &kv = o.kv;
    char b[512];
    std::snprintf(b, sizeof b,
                  "%s %u blocks of %s (%u layers x %s) per request, unit %s, %s batches (%s in "
                  "flight), store %u blocks "
                  "in %s (chunks of %u), %s prefixes (%u), pool %u slots, %s",
                  kv.store ? "store" : "restore", kv.blocks, human_bytes(kv.block_bytes()).c_str(),
                  kv.layers, human_bytes(kv.layer_bytes()).c_str(),
                  kv.whole_blocks ? "block" : "layer", kv.per_layer ? "per-layer" : "per-request",
                  std::to_string(o.batch ? o.batch : kv.pieces_per_submit()).c_str(),
                  kv.store_blocks, kv.chunk_files ? "chunk files" : "one file", kv.chunk_blocks,
                  kv.zipf ? ("zipf(" + std::to_string(kv.zipf_s).substr(0, 4) + ")").c_str()
                          : "random",
                  kv.prefixes, kv.pool_blocks,
                  o.path == PathType::cufile ? "cuFile batch API" : "phxfs batches");
    return b;
}

RunResult run_kvcache(const Options &o) {
    const KvOptions &kv = o.kv;
    const Store store(o);
    const uint64_t unit = unit_bytes(kv);
    RunResult res;
    res.io_size = unit;
    res.file_size = store.bytes();
    if (!o.duration_s)
        res.planned_bytes = uint64_t{kv.requests} * o.threads * kv.blocks * kv.block_bytes();

    phxfs::Device dev(o.device); // phxfs_open for the run
    ModeGuard mode(o.path);
    KvShared s(o, store);
    std::vector<Fd> fds;
    for (unsigned k = 0; k < store.files(); ++k) {
        const std::string p = store.path(k);
        if (o.cold || (kv.store && o.verify)) {
            Fd prep = open_or_throw(p, O_RDWR);
            if (kv.store && o.verify)
                zero_range(prep.get(), store.file_bytes());
            if (o.cold) {
                ::fdatasync(prep.get());
                ::posix_fadvise(prep.get(), 0, 0, POSIX_FADV_DONTNEED);
            }
        }
        fds.push_back(open_or_throw(p, (kv.store ? O_RDWR : O_RDONLY) | (o.cold ? O_DIRECT : 0)));
        s.fds.push_back(fds.back().get());
    }
    std::vector<phxcufile::FileHandle> cf_handles(o.path == PathType::cufile ? s.fds.size() : 0);
    for (size_t k = 0; k < cf_handles.size(); ++k)
        s.cufile.push_back(cf_handles[k].open(s.fds[k]));

    const bool check_writes = kv.store && o.verify;
    std::vector<std::vector<uint8_t>> written(o.threads);
    if (check_writes)
        for (auto &w : written)
            w.assign(store.bytes() / unit, 0);
    run_threads(o, s, res, [&](unsigned t, ThreadResult &r) { kv_worker(s, t, r, written[t]); });

    if (check_writes) {
        std::vector<int> rw;
        std::vector<Fd> rw_fds;
        for (unsigned k = 0; k < store.files(); ++k) {
            rw_fds.push_back(open_or_throw(store.path(k), O_RDWR));
            rw.push_back(rw_fds.back().get());
        }
        std::vector<uint8_t> any(store.bytes() / unit, 0);
        for (const auto &w : written)
            for (size_t u = 0; u < any.size(); ++u)
                any[u] |= w[u];
        if (res.error.empty() && !res.mismatch) {
            res.mismatch = check_stored(store, rw, any, unit);
            if (res.mismatch)
                res.mismatch_detail = "re-read with pread after the store run";
        }
        if (!res.error.empty() || res.mismatch) // the run zeroed the store: undo that
            for (unsigned k = 0; k < store.files(); ++k)
                write_pattern(rw[k], 0, store.file_bytes(), store.base(k));
    }
    if (o.verify && res.error.empty())
        res.verified = !res.mismatch;
    return res;
}

} // namespace phxbench
