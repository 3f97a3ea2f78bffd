#include "core/request.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/trace.hpp"
#include "engine/direct.hpp"

#include <algorithm>

namespace phxfs::core {

namespace {

// Errors with which the kernel refuses O_DIRECT on a mapping, as opposed to
// failing the I/O itself.
bool refused_direct(int err) {
    return err == EINVAL || err == EFAULT || err == EOPNOTSUPP;
}

} // namespace

std::string request_name(bool write, int device_id, int fd, size_t n, uint64_t off) {
    return std::string(write ? "write" : "read") + " dev " + std::to_string(device_id) + " fd " +
           std::to_string(fd) + " " + std::to_string(n) + " B at " + std::to_string(off);
}

size_t run_request(Session &s, Stats &stats, const Request &req) {
    const Config cfg = config();
    const phxfs_mode mode = cfg.mode;
    const bool write = req.write;
    const uint64_t off = req.off, n = req.n;
    const Resolved &r = req.where;
    File &file = req.file;
    const FileInfo &fi = file.info();
    const uint64_t t_start = now_ns();

    uint64_t end = off + n;
    if (!write && fi.size)
        end = std::min<uint64_t>(end, std::max<uint64_t>(*fi.size, off));

    // The direct part [ma, mb): whole blocks of the file's direct-I/O
    // alignment, at buffer addresses the storage may DMA to; the rest goes
    // through the compat engine, for the reason in `why`.
    uint64_t ma = off, mb = off;
    int dfd = -1; // the O_DIRECT fd of the direct part
    std::string why;
    const uint64_t oa = fi.dio_offset_align;
    if (mode == PHXFS_MODE_COMPAT) {
        why = "compat mode";
    } else if (!r.direct) {
        why = s.why_not_direct.empty() ? "buffer is not registered with phxfs_regmem"
                                       : s.why_not_direct;
    } else if (oa == 0) {
        why = "the file system does no direct I/O on this file (statx)";
    } else {
        ma = std::min(align_up(off, oa), end);
        mb = std::max(align_down(end, oa), ma);
        if (ma == mb) {
            why =
                "no whole " + std::to_string(oa) + "-byte block (the file's direct-I/O alignment)";
        } else if (reinterpret_cast<uintptr_t>(r.direct + (ma - off)) % fi.dio_mem_align) {
            why = "buffer address and file offset differ in alignment: the file's direct I/O "
                  "needs buffers aligned to " +
                  std::to_string(fi.dio_mem_align) + " bytes where its blocks start";
            ma = mb = off;
        } else if ((dfd = file.fd_with(true)) < 0) {
            why = "file refuses O_DIRECT: " + file.why_no_twin(true);
            ma = mb = off;
        } else if (ma != off || mb != end) {
            why = "unaligned head or tail (the file's direct I/O takes offsets and lengths in " +
                  std::to_string(oa) + "-byte multiples)";
        }
    }
    if (mode == PHXFS_MODE_DIRECT && (ma != off || mb != end))
        fail(ENOTSUP, "direct mode: " + why);
    // Auto mode on a device the module serves, sending (part of) it to compat.
    const bool auto_direct = mode == PHXFS_MODE_AUTO && s.node;
    if (auto_direct && (ma != off || mb != end))
        stats.fallback();

    struct Segment {
        uint64_t a, b;
        bool direct;
    };
    const Segment segs[] = {{off, ma, false}, {ma, mb, true}, {mb, end, false}};
    uint64_t done_to = off;
    auto compat = [&](uint64_t a, size_t len) -> size_t {
        if (write) {
            s.compat->write(file, r.buf + (a - off), r.kind, len, a);
            return len;
        }
        return s.compat->read(file, r.buf + (a - off), r.kind, len, a);
    };
    auto direct = [&](uint64_t a, size_t len) -> size_t {
        char *mapped = r.direct + (a - off);
        if (write) {
            direct_write(dfd, mapped, len, a);
            return len;
        }
        return direct_read(dfd, mapped, len, a);
    };
    size_t moved[PHXFS_PATH_COUNT] = {};
    for (const Segment &seg : segs) {
        if (seg.a == seg.b)
            continue;
        const uint64_t t0 = now_ns();
        const size_t len = seg.b - seg.a;
        phxfs_path path = seg.direct ? PHXFS_PATH_DIRECT : PHXFS_PATH_COMPAT;
        size_t got = 0;
        try {
            got = seg.direct ? direct(seg.a, len) : compat(seg.a, len);
        } catch (const Error &e) {
            // The kernel may still refuse O_DIRECT on the mapping (a file
            // system without direct I/O for this file, GUP refusing device
            // pages on a P2PDMA kernel): auto mode bounces the segment.
            if (!seg.direct || mode != PHXFS_MODE_AUTO || !refused_direct(e.err()))
                throw;
            stats.fallback();
            why = std::string("the kernel refused O_DIRECT on the mapping: ") + e.what();
            path = PHXFS_PATH_COMPAT;
            got = compat(seg.a, len);
        }
        if (path == PHXFS_PATH_DIRECT && !write && got)
            s.backend->after_direct_read();
        stats.add(path, write, got, now_ns() - t0);
        moved[path] += got;
        done_to = seg.a + got;
        if (got < len)
            break; // end of file
    }
    if (cfg.trace) {
        std::string line = request_name(write, req.device_id, fi.fd, n, off) + ":";
        if (moved[PHXFS_PATH_DIRECT])
            line += " direct " + std::to_string(moved[PHXFS_PATH_DIRECT]) + " B";
        if (moved[PHXFS_PATH_COMPAT]) {
            line += std::string(moved[PHXFS_PATH_DIRECT] ? "," : "") + " compat " +
                    std::to_string(moved[PHXFS_PATH_COMPAT]) + " B (" + why + ")";
        }
        if (!moved[PHXFS_PATH_DIRECT] && !moved[PHXFS_PATH_COMPAT])
            line += " nothing (end of file)";
        line += ", " + std::to_string((now_ns() - t_start) / 1000) + " us";
        trace::write(line);
    }
    return static_cast<size_t>(done_to - off);
}

} // namespace phxfs::core
