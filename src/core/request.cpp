#include "core/request.hpp"

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/trace.hpp"
#include "engine/direct.hpp"
#include "engine/disk.hpp"
#include "engine/uring.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

namespace phxfs::core {

namespace {

// Errors with which the kernel refuses O_DIRECT on a mapping, as opposed to
// failing the I/O itself.
bool refused_direct(int err) {
    return err == EINVAL || err == EFAULT || err == EOPNOTSUPP || err == EREMOTEIO;
}

// What the kernel's refusal (err, what) of O_DIRECT on the mapping means,
// for the trace and for direct mode: for EREMOTEIO, why this file's disk
// takes none of the device's P2PDMA pages (engine/disk reads sysfs, so only
// when the words are wanted).
std::string refusal(int err, const std::string &what, const File &file) {
    if (err != EREMOTEIO)
        return "the kernel refused O_DIRECT on the mapping: " + what;
    return p2pdma_refusal(disk_of_fd(file.fd())) + ": " + what;
}

// How a request divides: [ma, mb) by the direct path through dfd, the rest
// through the compat engine, for the reason `why` says. The reason's words
// are put together only when someone reads them (the trace, an error), so a
// request allocates nothing for them.
struct Split {
    enum class Why {
        none,
        compat_mode,
        session,
        no_dio,
        no_block,
        mem_align,
        no_twin,
        edges,
        refused
    };
    uint64_t ma = 0, mb = 0;
    int dfd = -1;
    Why why = Why::none;
    uint64_t why_n = 0;  // the block or alignment the reason names
    int refused_err = 0; // Why::refused: the kernel's refusal, errno
    std::string refused; // and message
};

std::string why_text(const Split &sp, const Session &s, File &file) {
    using Why = Split::Why;
    const std::string n = std::to_string(sp.why_n);
    switch (sp.why) {
    case Why::none:
        return "";
    case Why::compat_mode:
        return "compat mode";
    case Why::session:
        return s.why_not_direct.empty() ? "buffer is not registered with phxfs_regmem"
                                        : s.why_not_direct;
    case Why::no_dio:
        return "the file system does no direct I/O on this file (statx)";
    case Why::no_block:
        return "no whole " + n + "-byte block (the file's direct-I/O unit)";
    case Why::mem_align:
        return "buffer address and file offset differ in alignment: the file's direct I/O needs "
               "buffers aligned to " +
               n + " bytes where its blocks start";
    case Why::no_twin:
        return "file refuses O_DIRECT: " + file.why_no_twin(true);
    case Why::edges:
        return "unaligned head or tail (the file's direct I/O takes offsets and lengths in " + n +
               "-byte multiples)";
    case Why::refused:
        return refusal(sp.refused_err, sp.refused, file);
    }
    return "";
}

// The direct part: whole blocks of the file's direct-I/O alignment (for
// writes at least whole pages: a direct write must not share a page with a
// buffered one, which a block device does not serialise), at buffer
// addresses the storage may DMA to.
Split split(const Request &req, File &file, uint64_t end, phxfs_mode mode) {
    using Why = Split::Why;
    const FileInfo &fi = req.info;
    const uint64_t off = req.off;
    Split sp;
    sp.ma = sp.mb = off;
    const uint64_t a =
        req.write ? std::max<uint64_t>(fi.dio_offset_align, kAlign) : fi.dio_offset_align;
    if (mode == PHXFS_MODE_COMPAT) {
        sp.why = Why::compat_mode;
    } else if (!req.where.direct) {
        sp.why = Why::session;
    } else if (fi.dio_offset_align == 0) {
        sp.why = Why::no_dio;
    } else {
        const uint64_t ma = std::min(align_up(off, a), end);
        const uint64_t mb = std::max(align_down(end, a), ma);
        if (ma == mb) {
            sp.why = Why::no_block;
            sp.why_n = a;
        } else if (reinterpret_cast<uintptr_t>(req.where.direct + (ma - off)) % fi.dio_mem_align) {
            sp.why = Why::mem_align;
            sp.why_n = fi.dio_mem_align;
        } else if ((sp.dfd = file.fd_with(true)) < 0) {
            sp.why = Why::no_twin;
        } else {
            sp.ma = ma;
            sp.mb = mb;
            if (ma != off || mb != end) {
                sp.why = Why::edges;
                sp.why_n = a;
            }
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

// The path trace's line for a request that moved moved[path] bytes; ring:
// its direct bytes went through io_uring.
void trace_request(const Request &req, const size_t moved[PHXFS_PATH_COUNT], const std::string &why,
                   uint64_t t_start, bool ring = false) {
    std::string line = request_name(req.write, req.device_id, req.info.fd, req.n, req.off) + ":";
    if (moved[PHXFS_PATH_DIRECT])
        line += " direct " + std::to_string(moved[PHXFS_PATH_DIRECT]) + " B" +
                (ring ? " (io_uring)" : "");
    if (moved[PHXFS_PATH_COMPAT])
        line += std::string(moved[PHXFS_PATH_DIRECT] ? "," : "") + " compat " +
                std::to_string(moved[PHXFS_PATH_COMPAT]) + " B (" + why + ")";
    if (!moved[PHXFS_PATH_DIRECT] && !moved[PHXFS_PATH_COMPAT])
        line += " nothing (end of file)";
    line += ", " + std::to_string((now_ns() - t_start) / 1000) + " us";
    trace::write(line);
}

// Where a request of the file ends: at n bytes, or (reads) the file's end.
uint64_t request_end(const Request &req) {
    uint64_t end = req.off + req.n;
    if (!req.write && req.info.size)
        end = std::min<uint64_t>(end, std::max<uint64_t>(*req.info.size, req.off));
    return end;
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

    const uint64_t end = request_end(req);
    Split sp = split(req, file, end, mode);
    const bool whole = sp.ma == off && sp.mb == end;
    if (mode == PHXFS_MODE_DIRECT && !whole)
        fail(ENOTSUP, "direct mode: " + why_text(sp, s, file));
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
            direct_write(*s.workers, sp.dfd, mapped, len, a, unit);
            return len;
        }
        return direct_read(*s.workers, sp.dfd, mapped, len, a, unit);
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
                fail(EREMOTEIO, "direct mode: " + refusal(e.err(), e.what(), file));
            if (!seg.direct || mode != PHXFS_MODE_AUTO || !refused_direct(e.err()))
                throw;
            if (!fell_back)
                stats.fallback(); // one per request
            fell_back = true;
            sp.why = Split::Why::refused;
            sp.refused_err = e.err();
            sp.refused = e.what();
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
    if (cfg.trace)
        trace_request(req, moved, why_text(sp, s, file), t_start);
    return static_cast<size_t>(done_to - off);
}

namespace {

Request group_request(GroupRequest &g, int device_id) {
    return Request{g.write, device_id, *g.file, g.info, g.where, g.n, g.off};
}

// A request of a group run as it would run alone: its outcome in g.
void run_alone(Session &s, Stats &stats, int device_id, GroupRequest &g) {
    try {
        g.got = run_request(s, stats, group_request(g, device_id));
        g.done = true;
    } catch (...) {
        g.error = std::current_exception();
    }
}

// A request of a group that moved got bytes by one path, together with
// others: done, counted with its share ns of the group's time, and traced
// (a group's direct requests went through io_uring).
void group_done(Session &s, Stats &stats, const Config &cfg, int device_id, GroupRequest &g,
                phxfs_path path, size_t got, uint64_t ns, uint64_t t_start) {
    g.got = got;
    g.done = true;
    stats.add(path, g.write, got, ns);
    if (!cfg.trace)
        return;
    const Request req = group_request(g, device_id);
    size_t moved[PHXFS_PATH_COUNT] = {};
    moved[path] = got;
    const bool ring = path == PHXFS_PATH_DIRECT;
    trace_request(req, moved,
                  ring ? std::string()
                       : why_text(split(req, *g.file, request_end(req), cfg.mode), s, *g.file),
                  t_start, ring);
}

// The group's small requests that go direct whole, on this thread's
// io_uring ring together. One that the ring did not finish (no ring, a
// failure of its own, a ring that broke before taking it) runs alone as it
// would have without the ring: the same fallback to compat, the same
// errors. One that may still be in flight fails: running it again could
// race the transfer that may still land.
void run_on_ring(Session &s, Stats &stats, const Config &cfg, int device_id,
                 std::vector<uring::Piece> &pieces, std::vector<GroupRequest *> &owners) {
    using Outcome = uring::Piece::Outcome;
    const uint64_t t_start = now_ns();
    uring::run(pieces.data(), pieces.size());
    // Direct reads are visible to the device's kernels once flushed (as
    // run_request does after each); once for the group.
    std::exception_ptr flush_error;
    for (const uring::Piece &p : pieces) {
        if (p.outcome == Outcome::done && !p.write && p.got) {
            try {
                s.backend->after_direct_read();
            } catch (...) {
                flush_error = std::current_exception();
            }
            break;
        }
    }
    const uint64_t each = (now_ns() - t_start) / std::max<size_t>(pieces.size(), 1);
    for (size_t k = 0; k < pieces.size(); ++k) {
        const uring::Piece &p = pieces[k];
        GroupRequest &g = *owners[k];
        switch (p.outcome) {
        case Outcome::done:
            if (flush_error && !p.write && p.got)
                g.error = flush_error;
            else
                group_done(s, stats, cfg, device_id, g, PHXFS_PATH_DIRECT, p.got, each, t_start);
            break;
        case Outcome::in_doubt:
            g.error = std::make_exception_ptr(Error(
                EIO, std::string("in doubt: the io_uring ring failed (") + std::strerror(p.err) +
                         ") while this transfer was in flight; it may still land, so it "
                         "was not run again"));
            break;
        case Outcome::not_run:
        case Outcome::failed:
            run_alone(s, stats, device_id, g);
            break;
        }
    }
}

} // namespace

namespace {

// Cuts a request's compat part [off, end) into pieces that each fit a
// staging buffer: whole when small, else its ChunkPlan's chunks; they go
// behind `pieces`, each owned by g.
void add_pieces(const Config &cfg, GroupRequest &g, uint64_t end,
                std::vector<CompatEngine::Piece> &pieces, std::vector<GroupRequest *> &owners) {
    auto add = [&](uint64_t a, uint64_t b) {
        pieces.push_back(
            {g.file, g.where.buf + (a - g.off), g.where.kind, b - a, a, 0, {}, nullptr});
        owners.push_back(&g);
    };
    if (end - g.off <= CompatEngine::piece_bytes(cfg))
        return add(g.off, end);
    const ChunkPlan plan(g.off, end, cfg.chunk_bytes);
    for (size_t i = 0; i < plan.nchunks; ++i)
        add(plan.begin_of(i), plan.end_of(i));
}

} // namespace

// Pieces a thread keeps room for between groups (a warm group allocates
// nothing): a group of 4096 requests of up to a chunk each, and then some.
constexpr size_t kKeptPieces = 1 << 16;

void run_group(Session &s, Stats &stats, int device_id, GroupRequest *reqs, size_t n) {
    const Config cfg = config();
    const uint64_t t_start = now_ns();
    // The pieces that go through staging together, reads and writes apart,
    // and those that go direct whole through io_uring; kept per thread, so
    // that a group allocates nothing once warm.
    thread_local std::vector<CompatEngine::Piece> pieces[2];
    thread_local std::vector<GroupRequest *> owners[2];
    thread_local std::vector<uring::Piece> ring_pieces;
    thread_local std::vector<GroupRequest *> ring_owners;
    for (int w = 0; w < 2; ++w) {
        pieces[w].clear();
        owners[w].clear();
    }
    ring_pieces.clear();
    ring_owners.clear();
    const size_t small = CompatEngine::piece_bytes(cfg);
    size_t compat_requests[2] = {};
    for (size_t i = 0; i < n; ++i) {
        GroupRequest &g = reqs[i];
        if (g.done || g.error)
            continue;
        try {
            const Request req = group_request(g, device_id);
            const uint64_t end = request_end(req);
            const Split sp = split(req, *g.file, end, cfg.mode);
            if (cfg.uring_depth && end > g.off && end - g.off <= small && sp.ma == g.off &&
                sp.mb == end) {
                ring_pieces.push_back({sp.dfd, g.write, g.where.direct, end - g.off, g.off});
                ring_owners.push_back(&g);
                continue;
            }
            if (sp.ma != sp.mb || end == g.off) {
                run_alone(s, stats, device_id, g); // a direct part, or nothing
                continue;
            }
            if (cfg.mode == PHXFS_MODE_DIRECT)
                fail(ENOTSUP, "direct mode: " + why_text(sp, s, *g.file));
            check_compat_reach(*g.file, g.write, g.off, end, g.off, g.off);
            if (cfg.mode == PHXFS_MODE_AUTO && s.node)
                stats.fallback();
            add_pieces(cfg, g, end, pieces[g.write], owners[g.write]);
            ++compat_requests[g.write];
        } catch (...) {
            g.error = std::current_exception();
        }
    }
    if (!ring_pieces.empty())
        run_on_ring(s, stats, cfg, device_id, ring_pieces, ring_owners);
    for (int w = 0; w < 2; ++w) {
        std::vector<CompatEngine::Piece> &ps = pieces[w];
        if (ps.empty())
            continue;
        w ? s.compat->write_many(cfg, ps.data(), ps.size())
          : s.compat->read_many(cfg, ps.data(), ps.size());
        // The group's time, shared out evenly: no request has its own.
        const uint64_t each = (now_ns() - t_start) / compat_requests[w];
        // A request's pieces are adjacent: its bytes are theirs up to the
        // first short one (the end of the file), its error their first.
        for (size_t k = 0; k < ps.size();) {
            GroupRequest &g = *owners[w][k];
            size_t got = 0;
            bool short_read = false;
            std::exception_ptr error;
            for (; k < ps.size() && owners[w][k] == &g; ++k) {
                if (ps[k].error && !error)
                    error = ps[k].error;
                if (!short_read)
                    got += ps[k].got;
                short_read = short_read || ps[k].got < ps[k].n;
            }
            if (error)
                g.error = error;
            else
                group_done(s, stats, cfg, device_id, g, PHXFS_PATH_COMPAT, got, each, t_start);
        }
        ps.clear();
        owners[w].clear();
        if (ps.capacity() > kKeptPieces) { // a rare huge group: its memory goes back
            std::vector<CompatEngine::Piece>().swap(ps);
            std::vector<GroupRequest *>().swap(owners[w]);
        }
    }
    ring_pieces.clear();
    ring_owners.clear();
}

} // namespace phxfs::core
