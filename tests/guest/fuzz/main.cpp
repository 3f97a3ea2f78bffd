// phxfs_kmod_fuzz's parent (fuzz.hpp says what the program does): options,
// the counter area and how outcomes are counted into it, the stand-in's
// debugfs files, spawning and watching the workers, the report and main().
#include "fuzz.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <new>

namespace phxfuzz {

Shared *g_shared;
int g_worker = -1; // -1: the parent

// --- output, and counting outcomes into the counter area.
// One write(2) per line: lines of several processes never interleave, and
// nothing sits in a stdio buffer that fork would duplicate.
__attribute__((format(printf, 1, 2))) void say(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = std::min<int>(std::vsnprintf(buf, sizeof buf - 1, fmt, ap), sizeof buf - 2);
    va_end(ap);
    buf[n++] = '\n';
    (void)!::write(1, buf, n);
}

__attribute__((format(printf, 1, 2))) void violation(const char *fmt, ...) {
    char msg[sizeof g_shared->reason];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_shared->violations++ < 100)
        say("FUZZ violation w%d pid %d: %s", g_worker, ::getpid(), msg);
    int none = 0;
    if (g_shared->reason_taken.compare_exchange_strong(none, 1))
        std::snprintf(g_shared->reason, sizeof g_shared->reason, "w%d %.200s", g_worker, msg);
}

// Counts one outcome (err: 0 or an errno); an errno outside allowed breaks
// the contract. Returns whether the operation succeeded.
bool record(Op op, int err, const Errs &allowed, const char *what) {
    OpCount &c = g_shared->op[op];
    if (!err) {
        ++c.ok;
        return true;
    }
    ++c.fail;
    ++c.err[err > 0 && err < kMaxErrno ? err : 0];
    if (std::find(allowed.begin(), allowed.end(), err) == allowed.end())
        violation("%s%s%s: %s", kOpName[op], *what ? " " : "", what, ename(err));
    return false;
}

// A request the contract refuses: success breaks it too.
void must_fail(Op op, int err, const Errs &allowed, const char *what) {
    if (!err)
        violation("%s %s: succeeded", kOpName[op], what);
    record(op, err, allowed, what);
}

// --- the NVIDIA stand-in's debugfs files (tests/vm/nvstub).
int stub_write(const char *file, uint64_t v) {
    const UniqueFd f(::open((kStub + file).c_str(), O_WRONLY | O_CLOEXEC));
    if (f.fd < 0)
        return errno;
    const std::string s = std::to_string(v);
    return sys_err(::write(f.fd, s.data(), s.size()));
}

// cudaMalloc: "alloc" reports the last allocation of anyone, so the write and
// the read back happen under an exclusive flock of the file.
int stub_alloc(uint64_t bytes, uint64_t &va) {
    const UniqueFd f(::open((kStub + "alloc").c_str(), O_RDWR | O_CLOEXEC));
    if (f.fd < 0)
        return errno;
    ::flock(f.fd, LOCK_EX);
    const std::string s = std::to_string(bytes);
    int err = sys_err(::write(f.fd, s.data(), s.size()));
    char buf[64] = {};
    if (!err && ::lseek(f.fd, 0, SEEK_SET) == 0 && ::read(f.fd, buf, sizeof buf - 1) > 0)
        va = std::strtoull(buf, nullptr, 16);
    else if (!err)
        err = EIO;
    return err;
}

// Where a hung process's threads wait in the kernel, before it is killed.
void dump_stacks(pid_t pid) {
    std::error_code ec;
    for (const auto &t :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
        FILE *f = std::fopen((t.path() / "stack").c_str(), "r");
        if (!f)
            continue;
        char line[256];
        while (std::fgets(line, sizeof line, f))
            say("FUZZ stack %s %.*s", t.path().filename().c_str(),
                static_cast<int>(std::strcspn(line, "\n")), line);
        std::fclose(f);
    }
}

namespace {

// --- the parent.
int64_t read_counter(const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "r");
    long long v = -1;
    if (f) {
        if (std::fscanf(f, "%lld", &v) != 1)
            v = -1;
        std::fclose(f);
    }
    return v;
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: phxfs_kmod_fuzz [--seed N] [--ops N] [--seconds S] [--procs P]\n"
                         "         [--pcibar DEV] [--nvidia DEV] [--bar-off OFF --bar-len LEN]\n"
                         "         [--disk PATH --disk-off OFF --disk-len LEN]\n"
                         "  numbers take 0x and k/m/g/t suffixes\n");
    std::exit(2);
}

uint64_t parse_num(const char *s) {
    char *end = nullptr;
    uint64_t v = std::strtoull(s, &end, 0);
    static const std::string kUnits = "kmgt";
    if (const size_t u = *end ? kUnits.find(static_cast<char>(std::tolower(*end))) : kUnits.npos;
        u != kUnits.npos)
        v <<= 10 * (u + 1), ++end;
    if (end == s || *end)
        usage();
    return v;
}

Options parse(int argc, char **argv) {
    Options o;
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    o.seed = static_cast<uint64_t>(ts.tv_sec) * 1000003u ^ static_cast<uint64_t>(ts.tv_nsec);
    if (const char *d = std::getenv("PHXFS_GUEST_DISK"))
        o.disk = d;
    const std::map<std::string, uint64_t *> nums = {
        {"--seed", &o.seed},         {"--ops", &o.ops},          {"--seconds", &o.seconds},
        {"--procs", &o.procs},       {"--bar-off", &o.bar_off},  {"--bar-len", &o.bar_len},
        {"--disk-off", &o.disk_off}, {"--disk-len", &o.disk_len}};
    const std::map<std::string, std::string *> strs = {
        {"--pcibar", &o.node[0]}, {"--nvidia", &o.node[1]}, {"--disk", &o.disk}};
    if (argc % 2 == 0)
        usage();
    for (int i = 1; i < argc; i += 2) {
        if (nums.count(argv[i]))
            *nums.at(argv[i]) = parse_num(argv[i + 1]);
        else if (strs.count(argv[i]))
            *strs.at(argv[i]) = argv[i + 1];
        else
            usage();
    }
    if (o.procs < 1 || o.procs > kMaxProcs || o.bar_len < kPage || o.bar_off % kPage ||
        o.disk_off % kPage || o.disk_len < kMiB)
        usage();
    return o;
}

// INFO says which provider a node serves; a node that is absent is skipped.
Device probe(const std::string &node, uint32_t provider) {
    Device d;
    const UniqueFd f(::open(node.c_str(), O_RDWR | O_CLOEXEC));
    phxfs_ioctl_info info{};
    info.size = sizeof info;
    if (f.fd >= 0 && !do_ioctl(f.fd, PHXFS_IOCTL_INFO, &info) && info.provider == provider) {
        d.present = true;
        d.page = info.page_size;
        d.name = node.substr(node.rfind('/') + 1);
    } else {
        say("FUZZ note %s: not a %s device, skipped", node.c_str(),
            provider == PHXFS_PROVIDER_PCIBAR ? "pcibar" : "nvidia");
    }
    return d;
}

// Waits for the workers; one that makes no progress for 60 s (or, with
// --seconds S, is still there S + 60 s after the start) is killed and fails.
std::string watch(const Options &o, std::vector<pid_t> pids) {
    std::string fail;
    const int64_t start = now_ms(), limit = (static_cast<int64_t>(o.seconds) + 60) * 1000;
    std::vector<int64_t> killed_at(pids.size(), 0);
    for (size_t alive = pids.size(); alive;) {
        int st = 0;
        const pid_t pid = ::waitpid(-1, &st, WNOHANG);
        const auto it = std::find(pids.begin(), pids.end(), pid);
        if (pid > 0 && it != pids.end()) {
            const size_t w = static_cast<size_t>(it - pids.begin());
            if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) && !killed_at[w] && fail.empty())
                fail = "worker " + std::to_string(w) +
                       (WIFSIGNALED(st) ? " killed by signal " + std::to_string(WTERMSIG(st))
                                        : " exited with " + std::to_string(WEXITSTATUS(st)));
            *it = -1;
            --alive;
            continue;
        }
        ::usleep(100000);
        const int64_t now = now_ms();
        for (size_t w = 0; w < pids.size(); ++w) {
            if (pids[w] < 0)
                continue;
            const bool hung = o.seconds ? now - start > limit : now - g_shared->beat[w] > limit;
            if (hung && !killed_at[w]) {
                say("FUZZ worker %zu pid %d hung: killed", w, pids[w]);
                dump_stacks(pids[w]);
                ::kill(pids[w], SIGKILL);
                killed_at[w] = now;
                if (fail.empty())
                    fail = "worker " + std::to_string(w) + " hung";
            } else if (killed_at[w] && now - killed_at[w] > 30000) {
                say("FUZZ worker %zu pid %d does not die", w, pids[w]);
                pids[w] = -1;
                --alive;
            }
        }
    }
    return fail;
}

void report_ops() {
    for (int i = 0; i < kNumOps; ++i) {
        const OpCount &c = g_shared->op[i];
        std::string errs;
        for (int e = 0; e < kMaxErrno; ++e)
            if (const uint64_t n = c.err[e])
                errs += (errs.empty() ? "" : ",") + std::string(e ? ename(e) : "other") + ":" +
                        std::to_string(n);
        say("FUZZ op %s ok %llu fail %llu errnos %s", kOpName[i],
            static_cast<unsigned long long>(c.ok.load()),
            static_cast<unsigned long long>(c.fail.load()), errs.empty() ? "-" : errs.c_str());
    }
    say("FUZZ sigbus %llu", static_cast<unsigned long long>(g_shared->sigbus.load()));
}

// Everything is gone: pins drain once their last page reference goes.
std::string check_counters(const Device &d) {
    const std::string dir = "/sys/class/phxfs/" + d.name + "/";
    int64_t mapped = -1, draining = -1;
    for (const int64_t end = now_ms() + 30000;;) {
        mapped = read_counter(dir + "mapped_bytes");
        draining = read_counter(dir + "draining");
        if ((mapped == 0 && draining <= 0) || now_ms() > end)
            break;
        ::usleep(100000);
    }
    say("FUZZ counters %s mapped_bytes %lld draining %s", d.name.c_str(),
        static_cast<long long>(mapped), draining < 0 ? "absent" : std::to_string(draining).c_str());
    if (mapped != 0 || draining > 0)
        return "counters of " + d.name + " did not return to zero";
    return "";
}

} // namespace
} // namespace phxfuzz

using namespace phxfuzz;

int main(int argc, char **argv) {
    const Options o = parse(argc, argv);
    say("FUZZ seed %llu procs %d ops %llu", static_cast<unsigned long long>(o.seed),
        static_cast<int>(o.procs), static_cast<unsigned long long>(o.ops));
    const Device devs[2] = {probe(o.node[0], PHXFS_PROVIDER_PCIBAR),
                            probe(o.node[1], PHXFS_PROVIDER_NVIDIA)};
    if (!devs[0].present && !devs[1].present) {
        say("FUZZ result fail no phxfs device");
        return 1;
    }
    if (o.disk.empty())
        say("FUZZ note no --disk or PHXFS_GUEST_DISK: no O_DIRECT I/O");
    void *area =
        ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) {
        say("FUZZ result fail mmap of the counter area: %s", ename(errno));
        return 1;
    }
    g_shared = new (area) Shared();

    std::vector<pid_t> pids;
    for (int w = 0; w < static_cast<int>(o.procs); ++w) {
        g_shared->beat[w] = now_ms();
        const pid_t pid = ::fork();
        if (pid == 0) {
            g_worker = w;
            Worker(o, devs, w).run();
        }
        if (pid < 0) {
            say("FUZZ result fail fork: %s", ename(errno));
            return 1;
        }
        pids.push_back(pid);
    }
    std::string fail = watch(o, pids);

    // GPU memory of workers that exited without freeing it, then the knob off.
    for (int w = 0; w < static_cast<int>(o.procs); ++w)
        for (auto &va : g_shared->gpu[w])
            if (va)
                stub_write("free", va);
    if (exists(kStub + "fail"))
        stub_write("fail", 0);

    report_ops();
    for (const Device &d : devs)
        if (d.present)
            if (std::string f = check_counters(d); !f.empty() && fail.empty())
                fail = f;
    if (fail.empty() && g_shared->violations)
        fail =
            std::to_string(g_shared->violations.load()) + " violations, first: " + g_shared->reason;
    if (!fail.empty()) {
        say("FUZZ result fail %s", fail.c_str());
        return 1;
    }
    say("FUZZ result pass");
    return 0;
}
