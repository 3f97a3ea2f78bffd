#include "core/config.hpp"

#include "core/error.hpp"
#include "core/fork.hpp"
#include "core/trace.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <thread>

namespace phxfs::core {

namespace {

std::mutex cfg_mutex;
bool cfg_loaded = false;
Config cfg_current;
// Bumped (under cfg_mutex) whenever cfg_current changes: a thread whose copy
// is of the current generation takes no lock (every request of every device
// asks for the configuration several times). 0: not loaded.
std::atomic<uint64_t> cfg_generation{0};

unsigned default_threads() {
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    return std::clamp(hw, 2u, 16u);
}

unsigned long long env_number(const char *name, unsigned long long def) {
    const char *v = std::getenv(name);
    if (!v || !*v)
        return def;
    char *end = nullptr;
    errno = 0;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (errno || *end || v[0] == '-')
        fail(EINVAL, std::string(name) + "='" + v + "' is not a number");
    return n;
}

phxfs_mode env_mode() {
    const char *v = std::getenv("PHXFS_MODE");
    if (!v || !*v)
        return PHXFS_MODE_AUTO;
    const std::string s(v);
    if (s == "auto")
        return PHXFS_MODE_AUTO;
    if (s == "direct")
        return PHXFS_MODE_DIRECT;
    if (s == "compat")
        return PHXFS_MODE_COMPAT;
    fail(EINVAL, "PHXFS_MODE='" + s + "': expected auto, direct or compat");
}

void validate(const Config &c) {
    if (c.mode != PHXFS_MODE_AUTO && c.mode != PHXFS_MODE_DIRECT && c.mode != PHXFS_MODE_COMPAT)
        fail(EINVAL, "mode must be auto, direct or compat");
    if (c.threads < 1 || c.threads > kMaxThreads)
        fail(EINVAL, "threads must be within 1.." + std::to_string(kMaxThreads));
    if (c.chunk_bytes < kAlign || c.chunk_bytes % kAlign || c.chunk_bytes > (1ull << 30))
        fail(EINVAL, "chunk size must be a multiple of 4 KiB, at most 1 GiB");
    if (c.staging_bytes < 2 * c.chunk_bytes)
        fail(EINVAL, "staging memory must hold at least two chunks");
    if (c.uring_depth > kMaxUringDepth)
        fail(EINVAL, "io_uring depth must be within 0.." + std::to_string(kMaxUringDepth));
    if (c.worker_spin_us > kMaxWorkerSpinUs)
        fail(EINVAL, "PHXFS_WORKER_SPIN_US must be within 0.." + std::to_string(kMaxWorkerSpinUs));
}

void load_locked() {
    if (cfg_loaded)
        return;
    cfg_current = config_from_env();
    cfg_loaded = true;
    cfg_generation.fetch_add(1, std::memory_order_release);
}

} // namespace

Config config_from_env() {
    Config c;
    c.mode = env_mode();
    c.threads = static_cast<unsigned>(env_number("PHXFS_THREADS", default_threads()));
    c.chunk_bytes = env_number("PHXFS_CHUNK_KB", 4096) * 1024;
    c.staging_bytes = env_number("PHXFS_STAGING_MB", 0) << 20;
    c.trace = trace::from_env();
    c.uring_depth = static_cast<unsigned>(
        std::min<unsigned long long>(env_number("PHXFS_URING_DEPTH", c.uring_depth), UINT_MAX));
    c.worker_spin_us = static_cast<unsigned>(std::min<unsigned long long>(
        env_number("PHXFS_WORKER_SPIN_US", c.worker_spin_us), UINT_MAX));
    if (c.staging_bytes == 0) // two chunks per worker by default
        c.staging_bytes = 2 * c.chunk_bytes * c.threads;
    validate(c);
    return c;
}

Config config() {
    thread_local uint64_t seen = 0;
    thread_local Config copy;
    const uint64_t gen = cfg_generation.load(std::memory_order_acquire);
    if (gen != 0 && gen == seen)
        return copy;
    install_fork_handler();
    std::lock_guard lock(cfg_mutex);
    load_locked();
    copy = cfg_current;
    seen = cfg_generation.load(std::memory_order_relaxed);
    return copy;
}

void config_after_fork_child() {
    new (&cfg_mutex) std::mutex; // the old one is never unlocked: no thread owns it here
    // A parent thread may have been writing the values: keep them only if
    // they hold together, else start again from the environment.
    if (cfg_loaded) {
        try {
            validate(cfg_current);
        } catch (const Error &) {
            cfg_loaded = false;
        }
    }
    cfg_generation.fetch_add(1); // no thread's copy is trusted
}

void set_config(const Config &c) {
    validate(c);
    std::lock_guard lock(cfg_mutex);
    cfg_current = c;
    cfg_loaded = true;
    cfg_generation.fetch_add(1, std::memory_order_release);
}

} // namespace phxfs::core
