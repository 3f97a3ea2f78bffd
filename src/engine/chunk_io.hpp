// One chunk of a file moved between the file and pinned staging, laid out
// so that staging offset == file offset mod 4 KiB: the unit that both the
// request pipeline (engine/compat.cpp) and the group engine
// (engine/compat_group.cpp) move.
#pragma once

#include "engine/fileio.hpp"

#include <cstddef>
#include <cstdint>

namespace phxfs::core {

// Reads [a, b) into staging so that staging offset == file offset mod 4 KiB;
// returns the bytes of [a, b) now in staging + (a mod 4 KiB). From an
// O_DIRECT fd, whole blocks around [a, b), so that no twin is needed.
size_t read_chunk(File &file, char *stg, uint64_t a, uint64_t b);

// Writes [a, b) from staging laid out as read_chunk() lays it out. On an
// O_DIRECT fd, unaligned edges go through the buffered twin, which
// run_request() (core/request.cpp) made sure of before writing anything.
void write_chunk(File &file, const char *stg, uint64_t a, uint64_t b);

} // namespace phxfs::core
