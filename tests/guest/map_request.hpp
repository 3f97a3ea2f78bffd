// A MAP/UNMAP request of the phxfs.ko ABI, for the guest programs that speak
// the ioctl ABI directly (tests, fuzzer).
#pragma once

#include <phxfs/phxfs_ioctl.h>

#include <cstdint>

inline phxfs_ioctl_map map_request(uint64_t dev_addr, uint64_t len, const void *va) {
    phxfs_ioctl_map r{};
    r.size = sizeof r;
    r.dev_addr = dev_addr;
    r.len = len;
    r.vaddr = reinterpret_cast<uint64_t>(va);
    return r;
}
