// SPDX-License-Identifier: GPL-2.0
/*
 * One phxfs device: struct pages over a BAR and /dev/phxfsN.
 *
 * The BAR gets ZONE_DEVICE pages of type MEMORY_DEVICE_GENERIC, except where
 * the kernel has P2PDMA and the provider can use it (pcibar: p2pdma.c). That
 * type is a deliberate choice:
 *  - the pages are ordinary to GUP and to the DMA API, so O_DIRECT I/O pins
 *    them and the NVMe driver maps them with dma_map_page(), whose address is
 *    the BAR's physical address (or an IOMMU mapping of it);
 *  - MEMORY_DEVICE_PCI_P2PDMA pages may only come from the kernel's own
 *    p2pdma code (pci_p2pdma_add_resource), which sets up the provider and bus
 *    offset that pci_p2pdma_map_segment() reads; with CONFIG_PCI_P2PDMA off
 *    (Debian's 6.1 and 6.12) the type does not exist at all.
 * The price, and what this file does about it:
 *  - devices get the CPU physical address of a page: a BAR whose bus
 *    address differs, or a machine whose DMA addresses carry a memory
 *    encryption bit, is refused;
 *  - the kernel's P2P distance check does not run for us: user space
 *    (phxfs-check) says when a GPU and an SSD cannot reach each other;
 *  - code that touches the data with the CPU (dm-crypt, checksums) reads the
 *    BAR through the kernel's mapping, which is write-combining: so only
 *    prefetchable BARs (reads without side effects) are taken.
 * Page lifetime is pin.c's business.
 */
#include <linux/cc_platform.h>
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>

#include "phxfs.h"

/* memremap_pages() works in memory subsections of 2 MiB. */
#define PHXFS_BAR_ALIGN	(2UL << 20)

static int fail_add;
module_param(fail_add, int, 0444);
MODULE_PARM_DESC(fail_add,
		 "Tests: adding a device fails at step N (1 alloc .. 5 cdev)");

enum { PHXFS_STEP_ALLOC = 1, PHXFS_STEP_NAME, PHXFS_STEP_MEMTYPE,
	PHXFS_STEP_PAGES, PHXFS_STEP_CDEV };

static dev_t phxfs_devt;
static struct class *phxfs_class;
static LIST_HEAD(phxfs_devs);
static int phxfs_ndevs;

static bool phxfs_fail_at(int step)
{
	return fail_add == step;
}

struct page *phxfs_bar_page(struct phxfs_dev *dev, u64 offset)
{
	return pfn_to_page(PHYS_PFN(dev->bar_start + offset));
}

/* Slow (every page of the BAR), so for root only: tests and debugging. */
static unsigned long phxfs_pages_busy(struct phxfs_dev *dev)
{
	unsigned long n = 0;
	u64 off;

	for (off = 0; off < dev->bar_size; off += PAGE_SIZE) {
		if (page_ref_count(phxfs_bar_page(dev, off)) != 1)
			n++;
		if (!(off & ((1UL << 30) - 1)))
			cond_resched();
	}
	return n;
}

static ssize_t phxfs_stat_show(struct device *d, char *buf, size_t off)
{
	struct phxfs_dev *dev = dev_get_drvdata(d);
	atomic64_t *v = (atomic64_t *)((char *)&dev->stats + off);

	return sysfs_emit(buf, "%lld\n", atomic64_read(v));
}

#define PHXFS_STAT_ATTR(name)						\
static ssize_t name##_show(struct device *d,				\
			   struct device_attribute *attr, char *buf)	\
{									\
	return phxfs_stat_show(d, buf,					\
			       offsetof(struct phxfs_stats, name));	\
}									\
static DEVICE_ATTR_RO(name)

PHXFS_STAT_ATTR(maps);
PHXFS_STAT_ATTR(unmaps);
PHXFS_STAT_ATTR(errors);
PHXFS_STAT_ATTR(mapped_bytes);
PHXFS_STAT_ATTR(mapped_total);
PHXFS_STAT_ATTR(draining);
PHXFS_STAT_ATTR(draining_bytes);
PHXFS_STAT_ATTR(pinned_bytes);

static ssize_t provider_show(struct device *d, struct device_attribute *attr,
			     char *buf)
{
	struct phxfs_dev *dev = dev_get_drvdata(d);

	return sysfs_emit(buf, "%s\n", dev->ops->name);
}
static DEVICE_ATTR_RO(provider);

static ssize_t pci_show(struct device *d, struct device_attribute *attr,
			char *buf)
{
	struct phxfs_dev *dev = dev_get_drvdata(d);

	return sysfs_emit(buf, "%s bar%d\n", pci_name(dev->pdev), dev->bar);
}
static DEVICE_ATTR_RO(pci);

static ssize_t bar_size_show(struct device *d, struct device_attribute *attr,
			     char *buf)
{
	struct phxfs_dev *dev = dev_get_drvdata(d);

	return sysfs_emit(buf, "%llu\n", dev->bar_size);
}
static DEVICE_ATTR_RO(bar_size);

static ssize_t pages_busy_show(struct device *d, struct device_attribute *attr,
			       char *buf)
{
	struct phxfs_dev *dev = dev_get_drvdata(d);

	return sysfs_emit(buf, "%lu\n", phxfs_pages_busy(dev));
}
static DEVICE_ATTR_ADMIN_RO(pages_busy);

static struct attribute *phxfs_dev_attrs[] = {
	&dev_attr_maps.attr,
	&dev_attr_unmaps.attr,
	&dev_attr_errors.attr,
	&dev_attr_mapped_bytes.attr,
	&dev_attr_mapped_total.attr,
	&dev_attr_draining.attr,
	&dev_attr_draining_bytes.attr,
	&dev_attr_pinned_bytes.attr,
	&dev_attr_provider.attr,
	&dev_attr_pci.attr,
	&dev_attr_bar_size.attr,
	&dev_attr_pages_busy.attr,
	NULL,
};
ATTRIBUTE_GROUPS(phxfs_dev);

/* Whether the stock DMA path would hand devices the right address. */
static int phxfs_dev_check(struct phxfs_dev *dev)
{
	struct pci_dev *pdev = dev->pdev;
	int bar = dev->bar;

	if (!(pci_resource_flags(pdev, bar) & IORESOURCE_PREFETCH)) {
		pci_err(pdev, "phxfs: BAR%d is not prefetchable: reads may have side effects\n",
			bar);
		return -EINVAL;
	}
	if (!dev->bar_size || !IS_ALIGNED(dev->bar_start, PHXFS_BAR_ALIGN) ||
	    !IS_ALIGNED(dev->bar_size, PHXFS_BAR_ALIGN)) {
		pci_err(pdev, "phxfs: BAR%d %pa+%llx is not 2 MiB aligned\n",
			bar, &dev->bar_start, dev->bar_size);
		return -EINVAL;
	}
	if (pci_bus_address(pdev, bar) != dev->bar_start) {
		pci_err(pdev, "phxfs: BAR%d bus address %llx is not its CPU address %pa\n",
			bar, (u64)pci_bus_address(pdev, bar), &dev->bar_start);
		return -EINVAL;
	}
	if (cc_platform_has(CC_ATTR_MEM_ENCRYPT)) {
		pci_err(pdev, "phxfs: memory encryption is on: DMA addresses miss the BAR\n");
		return -EOPNOTSUPP;
	}
	return 0;
}

/*
 * A GPU BAR is MMIO: neither the kernel's nor a user's mapping of it may be
 * write-back. Reserving the range write-combining first makes the x86 PAT
 * code give memremap_pages() the same type for the kernel's mapping; user
 * mappings ask for it in phxfs_mmap().
 */
static int phxfs_dev_pages(struct phxfs_dev *dev)
{
	void *addr;
	int ret;

	if (phxfs_fail_at(PHXFS_STEP_MEMTYPE))
		return -ENOMEM;
	if (dev->ops->p2pdma && IS_ENABLED(CONFIG_PCI_P2PDMA))
		return phxfs_fail_at(PHXFS_STEP_PAGES) ? -ENOMEM : phxfs_p2p_pages(dev);
	ret = arch_io_reserve_memtype_wc(dev->bar_start, dev->bar_size);
	if (ret)
		return ret;
	dev->pgmap.type = MEMORY_DEVICE_GENERIC;
	dev->pgmap.range.start = dev->bar_start;
	dev->pgmap.range.end = dev->bar_start + dev->bar_size - 1;
	dev->pgmap.nr_range = 1;
	addr = phxfs_fail_at(PHXFS_STEP_PAGES) ? ERR_PTR(-ENOMEM) :
		memremap_pages(&dev->pgmap, dev_to_node(&dev->pdev->dev));
	if (IS_ERR(addr)) {
		arch_io_free_memtype_wc(dev->bar_start, dev->bar_size);
		return PTR_ERR(addr);
	}
	return 0;
}

static void phxfs_dev_unpages(struct phxfs_dev *dev)
{
	/* No pin is left (pin.c), so no page may be referenced either. */
	WARN_ON(phxfs_pages_busy(dev));
	if (dev->p2p_kaddr) {
		phxfs_p2p_unpages(dev);
		return;
	}
	memunmap_pages(&dev->pgmap);
	arch_io_free_memtype_wc(dev->bar_start, dev->bar_size);
}

static void phxfs_dev_release(struct device *d)
{
	kfree(container_of(d, struct phxfs_dev, device));
}

/*
 * The PCI device and BAR named by DOMAIN:BUS:DEV.FN@BAR in module parameter
 * param; the caller owns a reference on the device.
 */
struct pci_dev *phxfs_pci_spec(const char *param, const char *spec, int *bar)
{
	unsigned int domain, bus, slot, fn;
	struct pci_dev *pdev;

	if (sscanf(spec, "%x:%x:%x.%x@%d", &domain, &bus, &slot, &fn,
		   bar) != 5 || slot > 31 || fn > 7 || *bar < 0 ||
	    *bar >= PCI_STD_NUM_BARS) {
		pr_err("phxfs: %s=%s: expected DOMAIN:BUS:DEV.FN@BAR\n", param,
		       spec);
		return ERR_PTR(-EINVAL);
	}
	pdev = pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(slot, fn));
	if (!pdev) {
		pr_err("phxfs: %s=%s: no such PCI device\n", param, spec);
		return ERR_PTR(-ENODEV);
	}
	return pdev;
}

/*
 * Adds /dev/phxfsN for BAR bar of pdev. Takes over what the provider holds
 * for it (see phxfs_provider_ops.release), whether it succeeds or not.
 */
int phxfs_dev_add(struct pci_dev *pdev, int bar, u64 page_size,
		  const struct phxfs_provider_ops *ops, void *priv)
{
	struct phxfs_dev *dev;
	int ret;

	if (phxfs_ndevs >= PHXFS_MAX_DEVICES) {
		ret = -ENOSPC;
		goto err_provider;
	}
	dev = phxfs_fail_at(PHXFS_STEP_ALLOC) ? NULL :
		kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev) {
		ret = -ENOMEM;
		goto err_provider;
	}
	dev->index = phxfs_ndevs;
	dev->pdev = pdev;
	dev->bar = bar;
	dev->bar_start = pci_resource_start(pdev, bar);
	dev->bar_size = pci_resource_len(pdev, bar);
	dev->page_size = page_size;
	dev->ops = ops;
	dev->priv = priv;
	phxfs_drain_init(dev);

	device_initialize(&dev->device);
	dev->device.devt = MKDEV(MAJOR(phxfs_devt), dev->index);
	dev->device.class = phxfs_class;
	dev->device.parent = &pdev->dev;
	dev->device.groups = phxfs_dev_groups;
	dev->device.release = phxfs_dev_release;
	dev_set_drvdata(&dev->device, dev);
	ret = phxfs_fail_at(PHXFS_STEP_NAME) ? -ENOMEM :
		dev_set_name(&dev->device, PHXFS_DEV_PREFIX "%d", dev->index);
	if (ret)
		goto err_put;
	ret = phxfs_dev_check(dev);
	if (ret)
		goto err_put;
	ret = phxfs_dev_pages(dev);
	if (ret) {
		pci_err(pdev, "phxfs: no struct pages for BAR%d: %d\n", bar,
			ret);
		goto err_put;
	}
	cdev_init(&dev->cdev, &phxfs_fops);
	dev->cdev.owner = THIS_MODULE;
	ret = phxfs_fail_at(PHXFS_STEP_CDEV) ? -ENOMEM :
		cdev_device_add(&dev->cdev, &dev->device);
	if (ret)
		goto err_pages;
	list_add_tail(&dev->node, &phxfs_devs);
	phxfs_ndevs++;
	dev_info(&dev->device, "%s provider, %s BAR%d, %llu MiB at %pa\n",
		 ops->name, pci_name(pdev), bar, dev->bar_size >> 20,
		 &dev->bar_start);
	return 0;

err_pages:
	phxfs_dev_unpages(dev);
err_put:
	put_device(&dev->device);
err_provider:
	if (ops->release)
		ops->release(pdev, bar, priv);
	return ret;
}

/*
 * At unload: no file of ours is open and no pin is left (each holds a
 * module reference), so no page of any device is referenced.
 */
void phxfs_dev_remove_all(void)
{
	struct phxfs_dev *dev, *tmp;

	list_for_each_entry_safe_reverse(dev, tmp, &phxfs_devs, node) {
		list_del(&dev->node);
		cdev_device_del(&dev->cdev, &dev->device);
		phxfs_drain_exit(dev);
		phxfs_dev_unpages(dev);
		if (dev->ops->release)
			dev->ops->release(dev->pdev, dev->bar, dev->priv);
		put_device(&dev->device);
	}
	phxfs_ndevs = 0;
}

int phxfs_chrdev_init(void)
{
	int ret;

	ret = alloc_chrdev_region(&phxfs_devt, 0, PHXFS_MAX_DEVICES,
				  PHXFS_DEV_PREFIX);
	if (ret)
		return ret;
	phxfs_class = phxfs_class_create(PHXFS_DEV_PREFIX);
	if (IS_ERR(phxfs_class)) {
		unregister_chrdev_region(phxfs_devt, PHXFS_MAX_DEVICES);
		return PTR_ERR(phxfs_class);
	}
	return 0;
}

void phxfs_chrdev_exit(void)
{
	class_destroy(phxfs_class);
	unregister_chrdev_region(phxfs_devt, PHXFS_MAX_DEVICES);
}
