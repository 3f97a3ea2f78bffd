/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The NVIDIA peer-to-peer kernel interface, as far as phxfs uses it,
 * declared from NVIDIA's published description (nv-p2p.h of the NVIDIA
 * driver; see docs.nvidia.com, "Developing a Linux Kernel Module using
 * GPUDirect RDMA"). Only layouts and names NVIDIA documents are used.
 *
 * The driver allocates the page table and sets its version; callers must
 * check that the major version matches and the minor version is at least
 * the one they were written for, before reading any other field.
 */
#ifndef PHXFS_NV_P2P_ABI_H
#define PHXFS_NV_P2P_ABI_H

#include <linux/compiler.h>
#include <linux/types.h>

#define NVIDIA_P2P_MAJOR_VERSION(v)	(((v) >> 16) & 0xffff)
#define NVIDIA_P2P_MINOR_VERSION(v)	((v) & 0xffff)
#define NVIDIA_P2P_VERSION_COMPATIBLE(p, v)				\
	(NVIDIA_P2P_MAJOR_VERSION((p)->version) ==			\
	 NVIDIA_P2P_MAJOR_VERSION(v) &&					\
	 NVIDIA_P2P_MINOR_VERSION((p)->version) >=			\
	 NVIDIA_P2P_MINOR_VERSION(v))

/* GPU memory comes in pages of this many bytes. */
enum nvidia_p2p_page_size_type {
	NVIDIA_P2P_PAGE_SIZE_4KB = 0,
	NVIDIA_P2P_PAGE_SIZE_64KB,
	NVIDIA_P2P_PAGE_SIZE_128KB,
	NVIDIA_P2P_PAGE_SIZE_COUNT
};

struct nvidia_p2p_page {
	u64 physical_address;		/* bus address inside the GPU's BAR1 */
	union {
		struct {
			u32 wreqmb_h;
			u32 rreqmb_h;
			u32 rreqmb_0;
			u32 reserved[3];
		} fermi;
	} registers;			/* unused by phxfs */
};

#define NVIDIA_P2P_PAGE_TABLE_VERSION	0x00010002

struct nvidia_p2p_page_table {
	u32 version;
	u32 page_size;			/* enum nvidia_p2p_page_size_type */
	struct nvidia_p2p_page **pages;
	u32 entries;
	u8 *gpu_uuid;
};

/*
 * phxfs.ko refers to these weakly: they resolve when phxfs.ko loads after the
 * NVIDIA driver and are NULL when it is absent. symbol_get() would not do:
 * since Linux 6.5 it refuses symbols exported without _GPL, as the driver
 * exports these. The test stand-in, which defines them, sets
 * PHXFS_NV_P2P_DEFINE.
 */
#ifdef PHXFS_NV_P2P_DEFINE
#define PHXFS_NV_P2P_REF
#else
#define PHXFS_NV_P2P_REF __weak
#endif

/*
 * Pins [virtual_address, + length) of cudaMalloc'ed memory (64 KiB aligned)
 * of the calling process and returns its pages. The memory stays allocated
 * until nvidia_p2p_put_pages_persistent(), whatever the process does with it
 * meanwhile (cudaFree, exit), so no free callback can pull it from under
 * pages that are still referenced. Drivers refuse (-ENOTSUPP) on MIG-enabled
 * GPUs and vGPU. flags: 0.
 */
int nvidia_p2p_get_pages_persistent(u64 virtual_address, u64 length,
				    struct nvidia_p2p_page_table **page_table,
				    u32 flags) PHXFS_NV_P2P_REF;
int nvidia_p2p_put_pages_persistent(u64 virtual_address,
				    struct nvidia_p2p_page_table *page_table,
				    u32 flags) PHXFS_NV_P2P_REF;

#endif /* PHXFS_NV_P2P_ABI_H */
