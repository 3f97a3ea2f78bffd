// A pause for spin loops: tells the core a thread is waiting on memory, so
// that its sibling hyperthread (or the hypervisor) gets the time.
#pragma once

namespace phxfs::core {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

} // namespace phxfs::core
