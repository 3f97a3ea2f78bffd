// probe.cpp - the kernel module, file system types and O_DIRECT probes.
#include "probe.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

namespace phxcheck {

namespace {

struct FreeDeleter {
    void operator()(void *p) const noexcept { std::free(p); }
};

class Fd {
  public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0)
            ::close(fd_);
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    int get() const { return fd_; }

  private:
    int fd_;
};

std::string err(const char *what) {
    return std::string(what) + ": " + std::strerror(errno);
}

// A 4 KiB aligned read at offset 0 (and first a write, for a scratch file).
bool aligned_io(int fd, bool write_first, std::string &detail) {
    constexpr size_t kBlock = 4096;
    std::unique_ptr<void, FreeDeleter> buf(std::aligned_alloc(kBlock, kBlock));
    if (!buf) {
        detail = "out of memory";
        return false;
    }
    std::memset(buf.get(), 0x5a, kBlock);
    if (write_first && ::pwrite(fd, buf.get(), kBlock, 0) != static_cast<ssize_t>(kBlock)) {
        detail = err("O_DIRECT 4 KiB pwrite");
        return false;
    }
    if (::pread(fd, buf.get(), kBlock, 0) < 0) {
        detail = err("O_DIRECT 4 KiB pread");
        return false;
    }
    return true;
}

// O_DIRECT on a scratch file in dir: O_TMPFILE where the file system has it,
// else a named file removed at once.
bool probe_dir(const std::string &dir, std::string &detail) {
    int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EINVAL) {
        detail = err("open with O_DIRECT");
        return false; // the file system refuses O_DIRECT itself
    }
    if (fd < 0) { // no O_TMPFILE here: a named scratch file
        std::string tmpl = dir + "/.phxfs-check-XXXXXX";
        const int plain = ::mkstemp(tmpl.data());
        if (plain < 0) {
            detail = err(("cannot create a scratch file in " + dir).c_str());
            return false;
        }
        Fd keep(plain);
        fd = ::open(tmpl.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
        const int saved = errno;
        ::unlink(tmpl.c_str());
        if (fd < 0) {
            errno = saved;
            detail = err("open with O_DIRECT");
            return false;
        }
        detail = "a scratch file";
    } else {
        detail = "an O_TMPFILE scratch file";
    }
    Fd f(fd);
    std::string why;
    if (!aligned_io(f.get(), true, why)) {
        detail = why;
        return false;
    }
    detail = "4 KiB O_DIRECT write+read on " + detail + " worked";
    return true;
}

bool probe_file(const std::string &path, std::string &detail) {
    Fd f(::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    if (f.get() < 0) {
        detail = err("open with O_DIRECT");
        return false;
    }
    if (!aligned_io(f.get(), false, detail))
        return false;
    detail = "4 KiB O_DIRECT read of the file worked";
    return true;
}

} // namespace

KmodInfo probe_kmod() {
    KmodInfo k;
    std::error_code ec;
    k.loaded = std::filesystem::is_directory("/sys/module/phxfs", ec);
    if (std::ifstream v("/sys/module/phxfs/version"); v)
        std::getline(v, k.version);
    for (const auto &e : std::filesystem::directory_iterator("/dev", ec)) {
        const std::string n = e.path().filename().string();
        if (n.rfind("phxfs", 0) == 0)
            k.nodes.push_back(e.path().string());
    }
    std::sort(k.nodes.begin(), k.nodes.end());
    return k;
}

std::string fs_name(uint64_t magic) {
    switch (magic) {
    case 0xEF53:
        return "ext2/ext3/ext4";
    case 0x58465342:
        return "xfs";
    case 0x9123683E:
        return "btrfs";
    case 0x01021994:
        return "tmpfs";
    case 0x858458F6:
        return "ramfs";
    case 0x794C7630:
        return "overlay";
    case 0x6969:
        return "nfs";
    case 0x2FC12FC1:
        return "zfs";
    case 0xF2F52010:
        return "f2fs";
    case 0x65735546:
        return "fuse";
    case 0xFF534D42:
        return "cifs";
    case 0xFE534D42:
        return "smb2";
    case 0x01021997:
        return "9p";
    case 0x00C36400:
        return "ceph";
    case 0x0BD00BD0:
        return "lustre";
    case 0x5346544E:
        return "ntfs";
    case 0x4D44:
        return "vfat";
    }
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(magic));
    return b;
}

FsInfo probe_path(const std::string &path) {
    FsInfo fs;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        fs.error = err(("stat " + path).c_str());
        return fs;
    }
    struct statfs sfs {};
    if (::statfs(path.c_str(), &sfs) != 0) {
        fs.error = err(("statfs " + path).c_str());
        return fs;
    }
    fs.magic = static_cast<uint64_t>(static_cast<uint32_t>(sfs.f_type));
    fs.fs_type = fs_name(fs.magic);
    fs.is_dir = S_ISDIR(st.st_mode);
    if (fs.is_dir)
        fs.o_direct = probe_dir(path, fs.o_direct_detail);
    else if (S_ISREG(st.st_mode))
        fs.o_direct = probe_file(path, fs.o_direct_detail);
    else
        fs.o_direct_detail = "not a regular file or directory";
    return fs;
}

} // namespace phxcheck
