// stream.hpp - phxfs-bench --stream: stream-ordered requests on one stream.
#pragma once

#include "workload.hpp"

namespace phxbench {

RunResult run_stream(const Options &o, uint64_t io_size, uint64_t file_size);

} // namespace phxbench
