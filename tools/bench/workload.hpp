// workload.hpp - one timed run of phxfs-bench over a data file: reads and
// writes, sequential or random.
#pragma once

#include "options.hpp"
#include "run.hpp"

#include <phxfs/phxfs.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace phxbench {

// One timed run with request size io_size over the first file_size bytes.
RunResult run_workload(const Options &o, uint64_t io_size, uint64_t file_size);

} // namespace phxbench
