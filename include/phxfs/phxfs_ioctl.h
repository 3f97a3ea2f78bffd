/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * phxfs_ioctl.h - the ABI between phxfs.ko and libphxfs.
 *
 * This is the only header the kernel module and the user library share.
 * Every argument structure starts with its own size and every change to a
 * structure's layout bumps PHXFS_ABI_VERSION, so that an old library and a new
 * module refuse each other with a clear error instead of misreading fields.
 * The size is also encoded in each command number by _IOW/_IOWR.
 *
 * Protocol (user side):
 *   fd = open("/dev/phxfsN", O_RDWR);
 *   ioctl(fd, PHXFS_IOCTL_INFO, &info);          check info.abi_version
 *   va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);  offset 0
 *   ioctl(fd, PHXFS_IOCTL_MAP, &map);            map.vaddr inside va
 *   ... O_DIRECT I/O on map.vaddr ...
 *   ioctl(fd, PHXFS_IOCTL_UNMAP, &map);
 *   munmap(va, len);
 *
 * Device addresses (struct phxfs_ioctl_map.dev_addr) are provider-defined:
 *   PHXFS_PROVIDER_PCIBAR  byte offset into the device's BAR
 *   PHXFS_PROVIDER_NVIDIA  CUDA virtual address of cudaMalloc'ed memory
 * dev_addr and len must be multiples of phxfs_ioctl_info.page_size; vaddr must
 * be page aligned and [vaddr, vaddr + len) must lie inside one VMA created by
 * mmap on the same open file.
 */
#ifndef _UAPI_PHXFS_IOCTL_H
#define _UAPI_PHXFS_IOCTL_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define PHXFS_ABI_VERSION 1

#define PHXFS_DEV_PREFIX "phxfs" /* nodes are /dev/phxfs0, /dev/phxfs1, ... */
#define PHXFS_MAX_DEVICES 64

enum phxfs_provider {
	PHXFS_PROVIDER_PCIBAR = 1,
	PHXFS_PROVIDER_NVIDIA = 2,
};

/* PHXFS_IOCTL_INFO: what this device is. The caller sets size. */
struct phxfs_ioctl_info {
	__u32 size;		/* in: sizeof(struct phxfs_ioctl_info) */
	__u32 abi_version;	/* out: PHXFS_ABI_VERSION of the module */
	__u32 provider;		/* out: enum phxfs_provider */
	__u32 flags;		/* out: PHXFS_INFO_* */
	__u64 bar_size;		/* out: bytes of device memory behind the BAR */
	__u64 page_size;	/* out: mapping granularity (4 KiB, 64 KiB) */
	__u32 pci_domain;	/* out: PCI address of the device */
	__u8 pci_bus;
	__u8 pci_devfn;
	__u16 reserved0;
	char name[32];		/* out: "pcibar", "nvidia", NUL terminated */
};

/*
 * The device's pages are the kernel's P2PDMA pages (CONFIG_PCI_P2PDMA): only
 * O_DIRECT to queues that can DMA peer to peer pins them, after the kernel's
 * P2P distance check. Without it: MEMORY_DEVICE_GENERIC pages.
 */
#define PHXFS_INFO_P2PDMA	(1U << 0)

/* PHXFS_IOCTL_MAP / PHXFS_IOCTL_UNMAP. The caller sets size. */
struct phxfs_ioctl_map {
	__u32 size;		/* in: sizeof(struct phxfs_ioctl_map) */
	__u32 flags;		/* in: reserved, must be 0 */
	__u64 dev_addr;		/* in: device address, see above */
	__u64 len;		/* in: bytes, multiple of page_size */
	__u64 vaddr;		/* in: user address inside a phxfs VMA */
};

#define PHXFS_IOCTL_MAGIC 0xF5
#define PHXFS_IOCTL_INFO _IOWR(PHXFS_IOCTL_MAGIC, 1, struct phxfs_ioctl_info)
#define PHXFS_IOCTL_MAP _IOW(PHXFS_IOCTL_MAGIC, 2, struct phxfs_ioctl_map)
#define PHXFS_IOCTL_UNMAP _IOW(PHXFS_IOCTL_MAGIC, 3, struct phxfs_ioctl_map)

#endif /* _UAPI_PHXFS_IOCTL_H */
