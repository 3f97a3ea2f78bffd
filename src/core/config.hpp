// Tunables: built-in defaults, then the environment, then phxfs_set_config().
#pragma once

#include <phxfs/phxfs.h>

#include <cstddef>
#include <cstdint>

namespace phxfs::core {

struct Config {
    phxfs_mode mode = PHXFS_MODE_AUTO;
    unsigned threads = 0;     // 0 until resolved
    size_t chunk_bytes = 0;   // multiple of kAlign
    size_t staging_bytes = 0; // per device
    bool trace = false;       // the path trace (trace.hpp)
    // Small direct requests of a group in flight at once on a thread's
    // io_uring ring (engine/uring.hpp); 0: no io_uring, each runs alone.
    unsigned uring_depth = 128;
    // Idle pool workers spin this long for the next body before they sleep
    // (engine/workers.hpp; read when a pool is made); 0: never.
    unsigned worker_spin_us = 50;
};

inline constexpr size_t kAlign = 4096; // O_DIRECT alignment we always honour
inline constexpr unsigned kMaxThreads = 256;
inline constexpr unsigned kMaxUringDepth = 4096;
inline constexpr unsigned kMaxWorkerSpinUs = 1000000;

// The current configuration (a consistent snapshot).
Config config();
// Validates and installs cfg; throws Error(EINVAL) on a bad value.
void set_config(const Config &cfg);
// Defaults from the environment; throws Error(EINVAL) on a bad variable.
Config config_from_env();

// In a child of fork(): the configuration lock, which a thread of the parent
// may have held, is new (the values stay as the parent had them).
void config_after_fork_child();

} // namespace phxfs::core
