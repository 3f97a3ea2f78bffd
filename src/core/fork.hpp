// What a child of fork() gets from libphxfs: the library as a new process
// would find it, with every device closed.
//
// Data loaders fork. A child has only the thread that called fork(); the
// parent's worker threads, the locks they held and the device mappings the
// kernel did not copy (phxfs.ko's VMAs are VM_DONTCOPY) are not the child's.
// So the child starts over: a new worker pool, io_uring rings of its own (the
// parent's are closed in it), unlocked configuration, every device closed
// (phxfs_read/regmem/close say EBADF and that the parent opened it), and the
// parent's sessions and registrations left untouched, never unmapped or freed
// (their addresses may hold the child's own memory later).
// The child may phxfs_open again. CUDA cannot run in a child of a process
// that initialised it, so there a CUDA device's phxfs_open fails with ENODEV
// saying so; host and pcibar devices work.
#pragma once

namespace phxfs::core {

// Installs the fork handler once; called on the library's first use.
void install_fork_handler();

} // namespace phxfs::core
