// The path trace: an opt-in log of which path each read and write took and
// why the direct path did not serve it, as GDS users read cufile.log.
//
// Off by default; the library then prints nothing, ever. On with the
// environment variable PHXFS_TRACE (1 or "stderr": standard error; any other
// value: a file the lines are appended to) or phxfs_config.trace = 1
// (standard error unless PHXFS_TRACE names a file). One line per call:
//   phxfs[4711]: read dev 0 fd 5 1048576 B at 4096: direct 1044480 B, compat 4096 B
//       (unaligned head or tail), 812 us
#pragma once

#include <string>

namespace phxfs::core::trace {

// Whether PHXFS_TRACE asks for the trace; opens the file it names. Called
// once, when the configuration is first loaded.
bool from_env();
// Appends one line (a newline is added) to the trace's destination.
void write(const std::string &line);
// In a child of fork(): a new lock for the lines (fork.hpp).
void after_fork_child();

} // namespace phxfs::core::trace
