/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the parts of phxfs.ko share.
 *
 * main.c     module parameters, load and unload, the provider list
 * dev.c      one device: ZONE_DEVICE pages over a BAR, /dev/phxfsN, sysfs
 * file.c     open files: the address space and mmap offsets of each
 * map.c      mmap, the MAP/UNMAP ioctls and the VMA lifetime
 * pin.c      pins: device memory goes back only when no page is referenced
 * pcibar.c   the pcibar provider: BARs named by a module parameter
 * nvidia.c   the nvidia provider: cudaMalloc'ed memory via nvidia_p2p_*
 *
 * A provider finds devices at load (probe) and adds them with phxfs_dev_add();
 * afterwards the core asks it only to pin a device address range, to name
 * the struct page of each PAGE_SIZE piece of a pinned range, and to unpin.
 *
 * The rule everything here serves: a pinned range is handed back to its
 * provider (unpin) only once no page of it is referenced by anyone: no page
 * table, no I/O in flight, no long-term pin (vmsplice, io_uring fixed
 * buffers). pin.c enforces it; no path waits for it with a timeout.
 */
#ifndef PHXFS_H
#define PHXFS_H

#include <linux/cdev.h>
#include <linux/list.h>
#include <linux/memremap.h>
#include <linux/pci.h>
#include <linux/types.h>
#include <linux/workqueue.h>

#include <phxfs/phxfs_ioctl.h>

#ifndef CONFIG_X86_64
/*
 * The caching of BAR pages (dev.c) and the claim that a page's reference
 * count covers every user of it (pin.c) are proven on x86-64 only.
 */
#error "phxfs.ko supports x86-64 only"
#endif

extern int phxfs_debug;

#define phxfs_dbg(dev, fmt, ...)					\
	do {								\
		if (phxfs_debug)					\
			dev_info(&(dev)->device, fmt, ##__VA_ARGS__);	\
	} while (0)

/* Per open file: live MAPs and mmaps (each mmap takes an offset slot). */
#define PHXFS_MAX_MAPS		65536
#define PHXFS_MAX_MMAPS		1024
/* Pages of file offset per mmap slot: more than a 5-level user space. */
#define PHXFS_SLOT_SHIFT	44

struct phxfs_dev;

/* One open file of /dev/phxfsN; its VMAs hold it (vm_file). */
struct phxfs_file {
	struct phxfs_dev *dev;
	u64 owner;			/* unique per open: who holds a range */
	struct inode *inode;		/* private address space of our VMAs */
	struct ida slots;		/* mmap offsets: slot << PHXFS_SLOT_SHIFT */
	atomic_t nr_maps;		/* live MAPs, at most PHXFS_MAX_MAPS */
};

/*
 * A device address range held through the provider: created by MAP, owned
 * by its VMA's tree while mapped, then by the device's drain list until no
 * page of it is referenced, then unpinned and freed (pin.c). Each pin holds
 * a module reference, so the module cannot go while device memory is in use.
 */
struct phxfs_pin {
	struct phxfs_dev *dev;
	u64 owner;			/* phxfs_file.owner of the MAP */
	u64 dev_addr;
	u64 len;
	void *priv;			/* the provider's */
	/* Where the pin is mapped, for zapping it from every VMA. */
	struct address_space *mapping;
	pgoff_t pgoff;			/* file offset of the first page */
	unsigned long first;		/* its page index inside the VMA */
	/* Draining: on dev->drain_list; pages before idle_from are idle. */
	struct list_head drain_node;
	unsigned long idle_from;
};

struct phxfs_provider_ops {
	u32 id;			/* enum phxfs_provider */
	const char *name;
	/* Its BARs take the kernel's P2PDMA pages where it has them (p2pdma.c). */
	bool p2pdma;
	/* At load: adds the provider's devices; 0 also when it found none. */
	int (*probe)(void);
	/* Holds [pin->dev_addr, + pin->len) for pin->owner, or -errno. */
	int (*pin)(struct phxfs_dev *dev, struct phxfs_pin *pin);
	/* The page behind byte i * PAGE_SIZE of a pinned range. */
	struct page *(*page)(struct phxfs_dev *dev, struct phxfs_pin *pin,
			     unsigned long i);
	/* No page of the range is referenced: the memory may be reused. */
	void (*unpin)(struct phxfs_dev *dev, struct phxfs_pin *pin);
	/*
	 * Gives back what the provider took for a device it passed to
	 * phxfs_dev_add() (the pdev reference, a BAR region, priv): at
	 * removal, and on every failure of phxfs_dev_add() itself.
	 */
	void (*release)(struct pci_dev *pdev, int bar, void *priv);
};

struct phxfs_stats {
	atomic64_t maps;
	atomic64_t unmaps;
	atomic64_t errors;
	atomic64_t mapped_bytes;	/* now, in page tables */
	atomic64_t mapped_total;	/* since load */
	atomic64_t draining;		/* pins waiting for references to go */
	atomic64_t draining_bytes;
	atomic64_t pinned_bytes;	/* held from the provider, now */
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
	struct dev_pagemap pgmap;	/* MEMORY_DEVICE_GENERIC pages, or */
	void *p2p_kaddr;		/* the whole BAR from the P2PDMA pool */
	struct cdev cdev;
	struct device device;
	/* Pins out of every page table whose pages are still referenced. */
	spinlock_t drain_lock;
	struct list_head drain_list;
	struct delayed_work drain_work;
	unsigned long drain_delay;	/* jiffies until the next look */
	struct phxfs_stats stats;
};

extern const struct phxfs_provider_ops phxfs_pcibar_ops;
extern const struct phxfs_provider_ops phxfs_nvidia_ops;

/* dev.c */
int phxfs_dev_add(struct pci_dev *pdev, int bar, u64 page_size,
		  const struct phxfs_provider_ops *ops, void *priv);
void phxfs_dev_remove_all(void);
struct pci_dev *phxfs_pci_spec(const char *param, const char *spec, int *bar);
int phxfs_chrdev_init(void);
void phxfs_chrdev_exit(void);
struct page *phxfs_bar_page(struct phxfs_dev *dev, u64 offset);

/* p2pdma.c */
int phxfs_p2p_pages(struct phxfs_dev *dev);
void phxfs_p2p_unpages(struct phxfs_dev *dev);

/* file.c */
extern const struct file_operations phxfs_fops;

/* map.c */
int phxfs_mmap(struct file *filp, struct vm_area_struct *vma);
long phxfs_ioctl_map(struct file *filp, unsigned int cmd, void __user *arg);

/* pin.c */
struct phxfs_pin *phxfs_pin_create(struct phxfs_dev *dev, u64 owner,
				   u64 dev_addr, u64 len);
void phxfs_pin_zap(struct phxfs_pin *pin);
void phxfs_pin_retire(struct phxfs_pin *pin, bool may_sleep);
void phxfs_drain_init(struct phxfs_dev *dev);
void phxfs_drain_exit(struct phxfs_dev *dev);

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
