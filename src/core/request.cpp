#include "core/request.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/trace.hpp"
#include "engine/direct.hpp"

#include <algorithm>
#include <limits>

namespace phxfs::core {

namespace {

// Errors with which the kernel refuses O_DIRECT on a mapping, as opposed to
// failing the I/O itself.
bool refused_direct(int err) {
    return err == EINVAL || err == EFAULT || err == EOPNOTSUPP || err == EREMOTEIO;
}

// What the kernel's refusal means, for the trace and for direct mode.
std::string refusal(const Error &e) {
    if (e.err() == EREMOTEIO)
        return std::string("the kernel's P2P distance check refuses DMA between this disk and "
                           "the device's P2PDMA pages (no common PCIe switch or whitelisted "
                           "host bridge): ") +
               e.what();
    return std::string("the kernel refused O_DIRECT on the mapping: ") + e.what();
}

// How a request divides: [ma, mb) by the direct path through dfd, the rest
// through the compat engine, for the reason in `why`.
struct Split {
    uint64_t ma, mb;
    int dfd = -1;
    std::string why;
};

// The direct part: whole blocks of the file's direct-I/O alignment (for
// writes at least whole pages: a direct write must not share a page with a
// buffered one, which a block device does not serialise), at buffer
// addresses the storage may DMA to.
Split split(const Session &s, const Request &req, File &file, uint64_t end, phxfs_mode mode) {
    const FileInfo &fi = req.info;
    const uint64_t off = req.off;
    Split sp{off, off, -1, {}};
    const uint64_t a =
        req.write ? std::max<uint64_t>(fi.dio_offset_align, kAlign) : fi.dio_offset_align;
    if (mode == PHXFS_MODE_COMPAT) {
        sp.why = "compat mode";
    } else if (!req.where.direct) {
        sp.why = s.why_not_direct.empty() ? "buffer is not registered with phxfs_regmem"
                                          : s.why_not_direct;
    } else if (fi.dio_offset_align == 0) {
        sp.why = "the file system does no direct I/O on this file (statx)";
    } else {
        const uint64_t ma = std::min(align_up(off, a), end);
        const uint64_t mb = std::max(align_down(end, a), ma);
        if (ma == mb) {
            sp.why = "no whole " + std::to_string(a) + "-byte block (the file's direct-I/O unit)";
        } else if (reinterpret_cast<uintptr_t>(req.where.direct + (ma - off)) % fi.dio_mem_align) {
            sp.why = "buffer address and file offset differ in alignment: the file's direct I/O "
                     "needs buffers aligned to " +
                     std::to_string(fi.dio_mem_align) + " bytes where its blocks start";
        } else if ((sp.dfd = file.fd_with(true)) < 0) {
            sp.why = "file refuses O_DIRECT: " + file.why_no_twin(true);
        } else {
            sp.ma = ma;
            sp.mb = mb;
            if (ma != off || mb != end)
                sp.why = "unaligned head or tail (the file's direct I/O takes offsets and "
                         "lengths in " +
                         std::to_string(a) + "-byte multiples)";
        }
    }
    return sp;
}

// The compat engine reaches an O_DIRECT fd in 4 KiB blocks. What it cannot
// reach that way (a write's unaligned edges; everything, where the file
// wants larger blocks) goes through the file opened without O_DIRECT: make
// sure of that file before moving a byte, so that such a request fails whole
// rather than half done.
// [ma, mb) is the part that goes direct.
void check_compat_reach(File &file, bool write, uint64_t off, uint64_t end, uint64_t ma,
                        uint64_t mb) {
    const FileInfo &fi = file.info();
    if (!fi.direct || (ma == off && mb == end))
        return;
    const bool in_4k = fi.direct_in_4k();
    const bool edges = off % kAlign || end % kAlign;
    if ((!in_4k || (write && edges)) && file.fd_with(false) < 0)
        fail(EINVAL,
             "fd " + std::to_string(fi.fd) + " has O_DIRECT, and " +
                 (in_4k ? "this write's unaligned head or tail"
                        : "this file's " + std::to_string(fi.dio_offset_align) +
                              "-byte direct-I/O blocks") +
                 " need the file without O_DIRECT, which cannot be opened: " +
                 file.why_no_twin(false) +
                 (in_4k ? " (write whole 4 KiB blocks or pass an fd without O_DIRECT)" : ""));
}

} // namespace

void check_io_range(uint64_t buf_offset, uint64_t nbyte, uint64_t f_offset) {
    constexpr auto max = static_cast<uint64_t>(std::numeric_limits<off_t>::max());
    if (buf_offset > max || f_offset > max)
        fail(EINVAL, "offset beyond the largest off_t");
    if (nbyte > max || f_offset > max - nbyte)
        fail(EINVAL, "file range overflows");
}

std::string request_name(bool write, int device_id, int fd, size_t n, uint64_t off) {
    return std::string(write ? "write" : "read") + " dev " + std::to_string(device_id) + " fd " +
           std::to_string(fd) + " " + std::to_string(n) + " B at " + std::to_string(off);
}

size_t run_request(Session &s, Stats &stats, const Request &req) {
    const Config cfg = config();
    const phxfs_mode mode = cfg.mode;
    const bool write = req.write;
    const uint64_t off = req.off;
    const Resolved &r = req.where;
    File &file = req.file;
    const FileInfo &fi = req.info;
    const uint64_t t_start = now_ns();

    uint64_t end = off + req.n;
    if (!write && fi.size)
        end = std::min<uint64_t>(end, std::max<uint64_t>(*fi.size, off));

    Split sp = split(s, req, file, end, mode);
    const bool whole = sp.ma == off && sp.mb == end;
    if (mode == PHXFS_MODE_DIRECT && !whole)
        fail(ENOTSUP, "direct mode: " + sp.why);
    check_compat_reach(file, write, off, end, sp.ma, sp.mb);
    // Auto mode on a device the module serves, sending (part of) it to compat.
    bool fell_back = mode == PHXFS_MODE_AUTO && s.node && !whole;
    if (fell_back)
        stats.fallback();

    auto compat = [&](uint64_t a, size_t len) -> size_t {
        if (write) {
            s.compat->write(file, r.buf + (a - off), r.kind, len, a);
            return len;
        }
        return s.compat->read(file, r.buf + (a - off), r.kind, len, a);
    };
    auto direct = [&](uint64_t a, size_t len) -> size_t {
        char *mapped = r.direct + (a - off);
        const uint64_t unit = fi.dio_offset_align;
        if (write) {
            direct_write(sp.dfd, mapped, len, a, unit);
            return len;
        }
        return direct_read(sp.dfd, mapped, len, a, unit);
    };
    struct Segment {
        uint64_t a, b;
        bool direct;
    };
    const Segment segs[] = {{off, sp.ma, false}, {sp.ma, sp.mb, true}, {sp.mb, end, false}};
    uint64_t done_to = off;
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
            if (seg.direct && mode == PHXFS_MODE_DIRECT && e.err() == EREMOTEIO)
                fail(EREMOTEIO, "direct mode: " + refusal(e));
            if (!seg.direct || mode != PHXFS_MODE_AUTO || !refused_direct(e.err()))
                throw;
            if (!fell_back)
                stats.fallback(); // one per request
            fell_back = true;
            sp.why = refusal(e);
            check_compat_reach(file, write, seg.a, seg.b, seg.a, seg.a);
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
        std::string line = request_name(write, req.device_id, fi.fd, req.n, off) + ":";
        if (moved[PHXFS_PATH_DIRECT])
            line += " direct " + std::to_string(moved[PHXFS_PATH_DIRECT]) + " B";
        if (moved[PHXFS_PATH_COMPAT])
            line += std::string(moved[PHXFS_PATH_DIRECT] ? "," : "") + " compat " +
                    std::to_string(moved[PHXFS_PATH_COMPAT]) + " B (" + sp.why + ")";
        if (!moved[PHXFS_PATH_DIRECT] && !moved[PHXFS_PATH_COMPAT])
            line += " nothing (end of file)";
        line += ", " + std::to_string((now_ns() - t_start) / 1000) + " us";
        trace::write(line);
    }
    return static_cast<size_t>(done_to - off);
}

} // namespace phxfs::core
