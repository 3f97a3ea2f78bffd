// phxfs-check - what Phoenix finds on this machine: the library and its
// configuration, the kernel module, the devices, and for each PATH given the
// file system, whether O_DIRECT works there, and so which path a read takes.
#include "../gpu_memory.hpp"
#include "engine/disk.hpp"
#include "platform.hpp"
#include "probe.hpp"

#include <phxfs/phxfs.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using nlohmann::json;

namespace {

const char *kind_name(uint32_t k) {
    switch (k) {
    case PHXFS_DEVICE_HOST:
        return "host";
    case PHXFS_DEVICE_CUDA:
        return "cuda";
    case PHXFS_DEVICE_PCIBAR:
        return "pcibar";
    }
    return "unknown";
}

std::string version() {
    return std::to_string(PHXFS_VERSION_MAJOR) + "." + std::to_string(PHXFS_VERSION_MINOR) + "." +
           std::to_string(PHXFS_VERSION_PATCH);
}

const char *page_type_name(uint32_t t) {
    switch (t) {
    case PHXFS_PAGES_GENERIC:
        return "generic";
    case PHXFS_PAGES_P2PDMA:
        return "p2pdma";
    default:
        return "none";
    }
}

// What the kernel's P2P distance check will say to a disk, for a device
// with P2PDMA pages ("" for other pages: phxfs.ko does no such check).
std::string p2pdma_verdict(uint32_t page_type, const phxcheck::PciPeer &p) {
    if (page_type != PHXFS_PAGES_P2PDMA)
        return "";
    const phxfs::core::DiskInfo disk{p.name, p.transport, p.address};
    if (!disk.queue_takes_p2pdma())
        return "refused: " + phxfs::core::p2pdma_refusal(disk) +
               "; libphxfs moves the bytes through staging (auto mode)";
    if (p.common_bridge)
        return "the kernel's distance check passes (a bridge above both): direct";
    return "the kernel's distance check passes only through a whitelisted host bridge (AMD "
           "Zen, some Intel Xeons); elsewhere O_DIRECT fails with EREMOTEIO and libphxfs "
           "moves the bytes through staging (auto mode; PHXFS_TRACE=stderr shows it)";
}

// Which path a read of a file on `fs` (on `disk`) into memory of `dev`
// takes, and why.
json predict(const phxcheck::FsInfo &fs, const phxfs::core::DiskInfo &disk, const json &dev,
             uint32_t mode) {
    const bool direct_dev = dev.value("direct", false);
    const std::string id = "device " + std::to_string(dev.value("id", 0));
    if (mode == PHXFS_MODE_COMPAT)
        return {{"path", "compat"}, {"reason", "PHXFS_MODE is compat"}};
    std::string why;
    if (!direct_dev)
        why = id + ": " + dev.value("why_not_direct", std::string("no direct path"));
    else if (!fs.o_direct)
        why = "O_DIRECT does not work on this " + fs.fs_type + " (" + fs.o_direct_detail + ")";
    else if (dev.value("page_type", std::string()) == "p2pdma" && !disk.queue_takes_p2pdma() &&
             !disk.disk.empty())
        why = phxfs::core::p2pdma_refusal(disk) + " (O_DIRECT fails with EREMOTEIO)";
    if (why.empty() && disk.fabric())
        return {{"path", "direct"},
                {"reason", id + " has the direct path and O_DIRECT works on " + fs.fs_type + "; " +
                               disk.disk + " is reached over " + phxfs::core::fabric_name(disk) +
                               ": " + phxfs::core::fabric_mover(disk.transport)}};
    if (why.empty())
        return {{"path", "direct"},
                {"reason", id + " has the direct path and O_DIRECT works on " + fs.fs_type}};
    if (mode == PHXFS_MODE_DIRECT)
        return {{"path", "none"}, {"reason", "direct mode fails with ENOTSUP: " + why}};
    return {{"path", "compat"}, {"reason", why}};
}

std::string mib(uint64_t n) {
    char b[32];
    std::snprintf(b, sizeof b, "%.0f MiB", static_cast<double>(n) / (1 << 20));
    return n % (1 << 20) ? std::to_string(n >> 10) + " KiB" : std::string(b);
}

void print_text(const json &j) {
    std::printf("libphxfs %s\n", j["library"]["version"].get<std::string>().c_str());
    const json &c = j["config"];
    std::printf("config: mode %s%s, %u compat threads, chunk %s, staging %s per device\n",
                c["mode"].get<std::string>().c_str(),
                c.contains("env_mode")
                    ? (" (PHXFS_MODE=" + c["env_mode"].get<std::string>() + ")").c_str()
                    : "",
                c["threads"].get<unsigned>(), mib(c["chunk_bytes"].get<uint64_t>()).c_str(),
                mib(c["staging_bytes"].get<uint64_t>()).c_str());
    const json &k = j["kernel_module"];
    std::string nodes;
    for (const auto &n : k["nodes"])
        nodes += (nodes.empty() ? "" : " ") + n.get<std::string>();
    std::printf("kernel module: %s%s; device nodes: %s\n",
                k["loaded"].get<bool>() ? "phxfs loaded" : "not loaded (no /sys/module/phxfs)",
                k["version"].get<std::string>().empty()
                    ? ""
                    : (", version " + k["version"].get<std::string>()).c_str(),
                nodes.empty() ? "none" : nodes.c_str());
    const json &pl = j["platform"];
    std::printf("IOMMU: %s (%s)\n", pl["iommu"].get<std::string>().c_str(),
                pl["iommu_detail"].get<std::string>().c_str());
    std::printf("NVIDIA driver: %s\n", pl["nvidia_driver"].get<std::string>().empty()
                                           ? "not loaded (the nvidia provider needs it)"
                                           : pl["nvidia_driver"].get<std::string>().c_str());
    const json &cu = j["cuda"];
    std::printf("CUDA driver: %s\n", cu["available"].get<bool>()
                                         ? "available"
                                         : cu["why_not"].get<std::string>().c_str());
    std::printf("devices: %zu\n", j["devices"].size());
    for (const auto &d : j["devices"]) {
        if (d.contains("error")) {
            std::printf("  device %d: %s\n", d["id"].get<int>(),
                        d["error"].get<std::string>().c_str());
            continue;
        }
        std::printf("  device %d: %s (%s)%s%s, kmod %s, direct %s%s\n", d["id"].get<int>(),
                    d["name"].get<std::string>().c_str(), d["kind"].get<std::string>().c_str(),
                    d["pci_bus_id"].get<std::string>().empty() ? "" : ", pci ",
                    d["pci_bus_id"].get<std::string>().c_str(),
                    d["kmod_index"].get<int>() < 0
                        ? "none"
                        : ("/dev/phxfs" + std::to_string(d["kmod_index"].get<int>())).c_str(),
                    d["direct"].get<bool>() ? "yes" : "no",
                    d["direct"].get<bool>()
                        ? ""
                        : (" (" + d["why_not_direct"].get<std::string>() + ")").c_str());
        if (d["page_type"] == "p2pdma")
            std::printf("    pages: the kernel's P2PDMA pages (the kernel checks the P2P distance "
                        "to each disk; only O_DIRECT pins them)\n");
        else if (d["page_type"] == "generic")
            std::printf("    pages: phxfs.ko's MEMORY_DEVICE_GENERIC pages (this kernel has no "
                        "P2PDMA; phxfs.ko keeps them safe from long-term pins)\n");
        if (!d.contains("pci"))
            continue;
        const json &pci = d["pci"];
        if (pci.contains("error")) {
            std::printf("    pci: %s\n", pci["error"].get<std::string>().c_str());
            continue;
        }
        if (d["kind"] == "cuda")
            std::printf("    BAR1 (the GPU memory window): %s\n",
                        mib(pci["bar1_bytes"].get<uint64_t>()).c_str());
        if (!pci["iommu_group_type"].get<std::string>().empty())
            std::printf("    IOMMU group type: %s\n",
                        pci["iommu_group_type"].get<std::string>().c_str());
        if (pci["nvme"].empty())
            std::printf("    no NVMe controller on this machine's PCI bus\n");
        for (const auto &p : pci["nvme"]) {
            std::printf("    %s (%s): %s\n", p["name"].get<std::string>().c_str(),
                        (p["bus_id"].get<std::string>().empty() ? p["address"] : p["bus_id"])
                            .get<std::string>()
                            .c_str(),
                        p["relation"].get<std::string>().c_str());
            if (!p["p2pdma_distance"].get<std::string>().empty())
                std::printf("      P2PDMA: %s\n", p["p2pdma_distance"].get<std::string>().c_str());
        }
    }
    for (const auto &p : j["paths"]) {
        const std::string path = p["path"].get<std::string>();
        if (p.contains("error")) {
            std::printf("%s: %s\n", path.c_str(), p["error"].get<std::string>().c_str());
            continue;
        }
        std::printf("%s: %s file system (f_type %s), O_DIRECT %s (%s)\n", path.c_str(),
                    p["fs_type"].get<std::string>().c_str(),
                    p["fs_magic"].get<std::string>().c_str(),
                    p["o_direct"].get<bool>() ? "works" : "fails",
                    p["o_direct_detail"].get<std::string>().c_str());
        const json &dk = p["disk"];
        if (!dk["name"].get<std::string>().empty())
            std::printf("  disk: %s%s%s%s%s\n", dk["name"].get<std::string>().c_str(),
                        dk["multipath"].get<bool>() ? " (multipath head)" : "",
                        dk["transport"].get<std::string>().empty() ? "" : ", NVMe over ",
                        dk["transport"].get<std::string>().c_str(),
                        dk["address"].get<std::string>().empty()
                            ? ""
                            : (" (" + dk["address"].get<std::string>() + ")").c_str());
        const json &r = p["read"];
        std::printf("  a read into device %d memory would take: %s (%s)\n", r["device"].get<int>(),
                    r["path"].get<std::string>().c_str(), r["reason"].get<std::string>().c_str());
    }
    // Where the prediction above ends, the trace shows what each call did.
    if (c["trace"].get<bool>())
        std::printf("path trace: on (%s): one line per read and write, the path it took and why\n",
                    c.contains("env_trace")
                        ? ("PHXFS_TRACE=" + c["env_trace"].get<std::string>()).c_str()
                        : "phxfs_config.trace");
    else
        std::printf("path trace: off; run your program with PHXFS_TRACE=stderr (or =FILE) to see "
                    "which path each read and write takes and why\n");
}

} // namespace

int main(int argc, char **argv) {
    CLI::App app{"phxfs-check: what Phoenix finds on this machine (library, configuration, kernel "
                 "module, devices) and, for each PATH, which path a read of a file there takes."};
    std::vector<std::string> paths;
    bool as_json = false;
    int device = 0;
    app.add_option("PATH", paths, "files or directories to examine");
    app.add_flag("--json", as_json, "print one JSON object");
    app.add_option("-d,--device", device, "the device the path prediction is for")
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError &e) {
        return app.exit(e) == 0 ? 0 : 1;
    }

    json j;
    j["library"] = {{"version", version()}};
    phxfs_config cfg{};
    cfg.size = sizeof cfg;
    if (phxfs_get_config(&cfg) == 0) {
        j["config"] = {{"mode", phxfs_mode_name(static_cast<phxfs_mode>(cfg.mode))},
                       {"threads", cfg.threads},
                       {"chunk_bytes", cfg.chunk_bytes},
                       {"staging_bytes", cfg.staging_bytes},
                       {"trace", cfg.trace == 1}};
        if (const char *m = std::getenv("PHXFS_MODE"))
            j["config"]["env_mode"] = m;
        if (const char *t = std::getenv("PHXFS_TRACE"))
            j["config"]["env_trace"] = t;
    } else {
        std::fprintf(stderr, "phxfs-check: phxfs_get_config: %s\n", phxfs_last_error());
        return 1;
    }
    const phxcheck::KmodInfo k = phxcheck::probe_kmod();
    j["kernel_module"] = {{"loaded", k.loaded}, {"version", k.version}, {"nodes", k.nodes}};
    const phxcheck::IommuInfo iommu = phxcheck::probe_iommu();
    j["platform"] = {{"iommu", iommu.mode},
                     {"iommu_detail", iommu.detail},
                     {"nvidia_driver", phxcheck::nvidia_driver_version()}};
    const std::string why_no_cuda = phxtools::Cuda::why_unavailable();
    j["cuda"] = {{"available", why_no_cuda.empty()}, {"why_not", why_no_cuda}};

    json devices = json::array();
    const int n = phxfs_device_count();
    for (int d = 0; d < n; ++d) {
        phxfs_device_info info{};
        info.size = sizeof info;
        if (phxfs_device_get_info(d, &info) != 0) {
            devices.push_back({{"id", d}, {"error", phxfs_last_error()}});
            continue;
        }
        devices.push_back({{"id", d},
                           {"name", info.name},
                           {"kind", kind_name(info.kind)},
                           {"direct", info.direct == 1},
                           {"why_not_direct", info.why_not_direct},
                           {"pci_bus_id", info.pci_bus_id},
                           {"kmod_index", info.kmod_index},
                           {"page_type", page_type_name(info.page_type)},
                           {"numa_node", info.numa_node}});
        if (info.pci_bus_id[0] == '\0')
            continue;
        // Where the device sits: what decides whether peer-to-peer DMA works.
        const phxcheck::PciDeviceInfo pci = phxcheck::probe_pci(info.pci_bus_id);
        json peers = json::array();
        for (const auto &p : pci.nvme)
            peers.push_back({{"name", p.name},
                             {"bus_id", p.bus_id},
                             {"relation", p.relation},
                             {"transport", p.transport},
                             {"address", p.address},
                             {"p2p_likely", p.p2p_likely},
                             {"p2pdma_distance", p2pdma_verdict(info.page_type, p)}});
        devices.back()["pci"] = pci.error.empty() ? json{{"bar1_bytes", pci.bar1_bytes},
                                                         {"iommu_group_type", pci.iommu_group_type},
                                                         {"nvme", peers}}
                                                  : json{{"error", pci.error}};
    }
    j["devices"] = devices;
    if (n < 0)
        j["device_error"] = phxfs_last_error();

    int rc = 0;
    if (!paths.empty() && (device < 0 || device >= static_cast<int>(devices.size()) ||
                           devices[device].contains("error"))) {
        std::fprintf(stderr, "phxfs-check: no device %d (there are %zu)\n", device, devices.size());
        return 1;
    }
    json jp = json::array();
    for (const std::string &p : paths) {
        const phxcheck::FsInfo fs = phxcheck::probe_path(p);
        if (!fs.error.empty()) {
            jp.push_back({{"path", p}, {"error", fs.error}});
            rc = 1; // a PATH that cannot be examined is a usage error
            continue;
        }
        char magic[24];
        std::snprintf(magic, sizeof magic, "0x%llx", static_cast<unsigned long long>(fs.magic));
        const phxfs::core::DiskInfo disk = phxfs::core::disk_of_path(p);
        json r = predict(fs, disk, devices[device], cfg.mode);
        r["device"] = device;
        jp.push_back({{"path", p},
                      {"is_dir", fs.is_dir},
                      {"fs_type", fs.fs_type},
                      {"fs_magic", magic},
                      {"o_direct", fs.o_direct},
                      {"o_direct_detail", fs.o_direct_detail},
                      {"disk",
                       {{"name", disk.disk},
                        {"transport", disk.transport},
                        {"address", disk.address},
                        {"multipath", disk.multipath}}},
                      {"read", r}});
    }
    j["paths"] = jp;

    if (as_json)
        std::printf("%s\n", j.dump(2).c_str());
    else
        print_text(j);
    return rc;
}
