/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the parts of phxfs.ko share.
 *
 * main.c     module parameters, load and unload, the provider list
 * dev.c      one device: ZONE_DEVICE pages over a BAR, /dev/phxfsN, sysfs
 * map.c      open, mmap, the MAP/UNMAP ioctls and the VMA lifetime
 * pcibar.c   the pcibar provider: BARs named by a module parameter
 * nvidia.c   the nvidia provider: cudaMalloc'ed memory via nvidia_p2p_*
 *
 * A provider finds devices at load (probe) and adds them with phxfs_dev_add();
 * afterwards the core asks it only to pin a device address range, to name the struct page
 * of each PAGE_SIZE piece of a pinned range, and to unpin.
 */
#ifndef PHXFS_H
#define PHXFS_H

#include <linux/cdev.h>
#include <linux/list.h>
#include <linux/memremap.h>
#include <linux/pci.h>
#include <linux/types.h>

#include <phxfs/phxfs_ioctl.h>

extern int phxfs_debug;

#define phxfs_dbg(dev, fmt, ...)					\
	do {								\
		if (phxfs_debug)					\
			dev_info((dev)->device, fmt, ##__VA_ARGS__);	\
	} while (0)

struct phxfs_dev;

enum phxfs_pin_state {
	PHXFS_PIN_NEW,		/* the provider is pinning it */
	PHXFS_PIN_HELD,		/* pinned; pages may be in page tables */
	PHXFS_PIN_REVOKED,	/* the device memory went away under us */
	PHXFS_PIN_FREED,	/* unpinned by UNMAP, munmap or exit */
};

/*
 * A device address range held for mapping; priv belongs to the provider.
 * The user mapping of the range is [start, start + len) of mapping (the
 * device file), so it can be torn down from any context.
 */
struct phxfs_pin {
	u64 dev_addr;
	u64 len;
	void *priv;
	struct mutex lock;		/* protects state */
	enum phxfs_pin_state state;
	struct address_space *mapping;
	loff_t start;
};

struct phxfs_provider_ops {
	u32 id;			/* enum phxfs_provider */
	const char *name;
	/* At load: adds the provider's devices; 0 also when it found none. */
	int (*probe)(void);
	/* Holds [pin->dev_addr, + pin->len) or fails with -errno. */
	int (*pin)(struct phxfs_dev *dev, struct phxfs_pin *pin);
	/* The page behind byte i * PAGE_SIZE of a pinned range. */
	struct page *(*page)(struct phxfs_dev *dev, struct phxfs_pin *pin,
			     unsigned long i);
	void (*unpin)(struct phxfs_dev *dev, struct phxfs_pin *pin);
	/* Unpinned memory may be reused: drain I/O on it before unpin(). */
	bool unpin_waits_for_io;
	/*
	 * Forgets a pin whose memory was revoked before pin() returned (see
	 * phxfs_pin_revoke()); may be NULL for providers that never revoke.
	 */
	void (*drop)(struct phxfs_dev *dev, struct phxfs_pin *pin);
	/* Gives back what the provider took for the device; may be NULL. */
	void (*release)(struct phxfs_dev *dev);
};

struct phxfs_stats {
	atomic64_t maps;
	atomic64_t unmaps;
	atomic64_t errors;
	atomic64_t revokes;
	atomic64_t mapped_bytes;	/* now */
	atomic64_t mapped_total;	/* since load */
};

struct phxfs_dev {
	struct list_head node;
	int index;			/* N of /dev/phxfsN */
	struct pci_dev *pdev;
	int bar;
	phys_addr_t bar_start;
	u64 bar_size;
	u64 page_size;			/* MAP granularity of the provider */
	const struct phxfs_provider_ops *ops;
	void *priv;			/* the provider's */
	struct dev_pagemap pgmap;
	void __iomem *wc;		/* holds the BAR's write-combining type */
	struct cdev cdev;
	struct device *device;
	atomic64_t next_pgoff;		/* file offsets handed to mmaps */
	struct phxfs_stats stats;
};

extern const struct phxfs_provider_ops phxfs_pcibar_ops;
extern const struct phxfs_provider_ops phxfs_nvidia_ops;

int phxfs_dev_add(struct pci_dev *pdev, int bar, u64 page_size,
		  const struct phxfs_provider_ops *ops, void *priv);
void phxfs_dev_remove_all(void);
struct pci_dev *phxfs_pci_spec(const char *param, const char *spec, int *bar);
int phxfs_chrdev_init(void);
void phxfs_chrdev_exit(void);

struct page *phxfs_bar_page(struct phxfs_dev *dev, u64 offset);
bool phxfs_page_busy(struct page *page);
bool phxfs_pin_revoke(struct phxfs_dev *dev, struct phxfs_pin *pin);
extern const struct file_operations phxfs_fops;

/* Kernel API differences, detected by Kbuild (see Kbuild). */
#ifdef PHXFS_HAVE_VM_FLAGS_SET
#define phxfs_vm_flags_set(vma, flags) vm_flags_set(vma, flags)
#else
#define phxfs_vm_flags_set(vma, flags) ((vma)->vm_flags |= (flags))
#endif

#ifdef PHXFS_HAVE_CLASS_CREATE_OWNER
#define phxfs_class_create(name) class_create(THIS_MODULE, name)
#else
#define phxfs_class_create(name) class_create(name)
#endif

#endif /* PHXFS_H */
