// probe.hpp - what phxfs-check looks at outside the library: the kernel
// module in sysfs and /dev, file system types, and whether O_DIRECT works.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace phxcheck {

struct KmodInfo {
    bool loaded = false;            // /sys/module/phxfs exists
    std::string version;            // /sys/module/phxfs/version, "" when absent
    std::vector<std::string> nodes; // /dev/phxfs*
};
KmodInfo probe_kmod();

struct FsInfo {
    std::string error; // set when the path cannot be examined at all
    bool is_dir = false;
    uint64_t magic = 0;          // statfs f_type
    std::string fs_type;         // "ext4", "xfs", ..., or the magic in hex
    bool o_direct = false;       // an O_DIRECT open and a 4 KiB aligned read worked
    std::string o_direct_detail; // how it was probed, or why it failed
};
FsInfo probe_path(const std::string &path);

// "ext2/ext3/ext4", "xfs", ... or "0x1234abcd".
std::string fs_name(uint64_t magic);

} // namespace phxcheck
