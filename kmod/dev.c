// SPDX-License-Identifier: GPL-2.0
/*
 * One phxfs device: struct pages over a BAR and /dev/phxfsN.
 *
 * The BAR gets ZONE_DEVICE pages of type MEMORY_DEVICE_GENERIC. That type is
 * a deliberate choice:
 *  - the pages are ordinary to GUP and to the DMA API, so O_DIRECT I/O pins
 *    them and the NVMe driver maps them with dma_map_page(), whose address is
 *    the BAR's physical address (or an IOMMU mapping of it);
 *  - MEMORY_DEVICE_PCI_P2PDMA pages may only come from the kernel's own
 *    p2pdma code (pci_p2pdma_add_resource), which sets up the provider and bus
 *    offset that pci_p2pdma_map_segment() reads. Re-declaring that private
 *    structure from a module leaves those fields unset, and since 6.2 GUP
 *    refuses such pages for queues without P2PDMA support; with
 *    CONFIG_PCI_P2PDMA off (Debian's 6.1 and 6.12) the type does not exist
 *    at all. GENERIC pages behave the same with or without CONFIG_PCI_P2PDMA.
 * The price: the kernel's P2P distance check does not run for us, so user
 * space (phxfs-check) must say when a GPU and an SSD cannot reach each other.
 *
 * MEMORY_DEVICE_GENERIC pages start with a reference count of one, which
 * never drops while the device exists; a page is busy while its count is
 * above one (mapped in a process or pinned by I/O in flight).
 */
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>

#include "phxfs.h"

/* memremap_pages() works in memory subsections of 2 MiB. */
#define PHXFS_BAR_ALIGN	(2UL << 20)

static dev_t phxfs_devt;
static struct class *phxfs_class;
static LIST_HEAD(phxfs_devs);
static int phxfs_ndevs;

struct page *phxfs_bar_page(struct phxfs_dev *dev, u64 offset)
{
	return pfn_to_page(PHYS_PFN(dev->bar_start + offset));
}

/* Held beyond its base reference: mapped, or pinned by I/O (see above). */
bool phxfs_page_busy(struct page *page)
{
	return page_ref_count(page) != 1;
}

static unsigned long phxfs_pages_busy(struct phxfs_dev *dev)
{
	unsigned long n = 0;
	u64 off;

	for (off = 0; off < dev->bar_size; off += PAGE_SIZE) {
		if (phxfs_page_busy(phxfs_bar_page(dev, off)))
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
PHXFS_STAT_ATTR(revokes);
PHXFS_STAT_ATTR(mapped_bytes);
PHXFS_STAT_ATTR(mapped_total);

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
static DEVICE_ATTR_RO(pages_busy);

static struct attribute *phxfs_dev_attrs[] = {
	&dev_attr_maps.attr,
	&dev_attr_unmaps.attr,
	&dev_attr_errors.attr,
	&dev_attr_revokes.attr,
	&dev_attr_mapped_bytes.attr,
	&dev_attr_mapped_total.attr,
	&dev_attr_provider.attr,
	&dev_attr_pci.attr,
	&dev_attr_bar_size.attr,
	&dev_attr_pages_busy.attr,
	NULL,
};
ATTRIBUTE_GROUPS(phxfs_dev);

/*
 * A GPU BAR is MMIO: neither the kernel's nor a user's mapping of it may be
 * write-back. Reserving the range write-combining first makes the x86 PAT
 * code give memremap_pages() the same type for the kernel's linear mapping;
 * user mappings ask for it in phxfs_mmap().
 */
static int phxfs_dev_pages(struct phxfs_dev *dev)
{
	void *addr;

	dev->wc = ioremap_wc(dev->bar_start, dev->bar_size);
	if (!dev->wc)
		return -ENOMEM;
	dev->pgmap.type = MEMORY_DEVICE_GENERIC;
	dev->pgmap.range.start = dev->bar_start;
	dev->pgmap.range.end = dev->bar_start + dev->bar_size - 1;
	dev->pgmap.nr_range = 1;
	addr = memremap_pages(&dev->pgmap, dev_to_node(&dev->pdev->dev));
	if (IS_ERR(addr)) {
		iounmap(dev->wc);
		return PTR_ERR(addr);
	}
	return 0;
}

/* Pages pinned by I/O still in flight outlive their mapping: wait for them. */
static void phxfs_dev_wait_idle(struct phxfs_dev *dev)
{
	unsigned long warn_at = jiffies + 10 * HZ;
	unsigned long busy;

	while ((busy = phxfs_pages_busy(dev))) {
		if (time_after(jiffies, warn_at)) {
			dev_warn(dev->device, "waiting for %lu busy pages\n",
				 busy);
			warn_at = jiffies + 10 * HZ;
		}
		msleep(100);
	}
}

static void phxfs_dev_free(struct phxfs_dev *dev)
{
	if (dev->ops->release)
		dev->ops->release(dev);
	kfree(dev);
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

int phxfs_dev_add(struct pci_dev *pdev, int bar, u64 page_size,
		  const struct phxfs_provider_ops *ops, void *priv)
{
	dev_t devt = MKDEV(MAJOR(phxfs_devt), phxfs_ndevs);
	struct phxfs_dev *dev;
	int ret;

	if (phxfs_ndevs >= PHXFS_MAX_DEVICES)
		return -ENOSPC;
	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	dev->index = phxfs_ndevs;
	dev->pdev = pdev;
	dev->bar = bar;
	dev->bar_start = pci_resource_start(pdev, bar);
	dev->bar_size = pci_resource_len(pdev, bar);
	dev->page_size = page_size;
	dev->ops = ops;
	dev->priv = priv;

	if (!dev->bar_size || !IS_ALIGNED(dev->bar_start, PHXFS_BAR_ALIGN) ||
	    !IS_ALIGNED(dev->bar_size, PHXFS_BAR_ALIGN)) {
		pci_err(pdev, "phxfs: BAR%d %pa+%llx is not 2 MiB aligned\n",
			bar, &dev->bar_start, dev->bar_size);
		ret = -EINVAL;
		goto err_free;
	}
	ret = phxfs_dev_pages(dev);
	if (ret) {
		pci_err(pdev, "phxfs: no struct pages for BAR%d: %d\n", bar,
			ret);
		goto err_free;
	}
	cdev_init(&dev->cdev, &phxfs_fops);
	dev->cdev.owner = THIS_MODULE;
	ret = cdev_add(&dev->cdev, devt, 1);
	if (ret)
		goto err_pages;
	dev->device = device_create_with_groups(phxfs_class, &pdev->dev, devt,
						dev, phxfs_dev_groups,
						PHXFS_DEV_PREFIX "%d",
						dev->index);
	if (IS_ERR(dev->device)) {
		ret = PTR_ERR(dev->device);
		goto err_cdev;
	}
	list_add_tail(&dev->node, &phxfs_devs);
	phxfs_ndevs++;
	dev_info(dev->device, "%s provider, %s BAR%d, %llu MiB at %pa\n",
		 ops->name, pci_name(pdev), bar, dev->bar_size >> 20,
		 &dev->bar_start);
	return 0;

err_cdev:
	cdev_del(&dev->cdev);
err_pages:
	memunmap_pages(&dev->pgmap);
	iounmap(dev->wc);
err_free:
	phxfs_dev_free(dev);
	return ret;
}

/* Called at unload, when no file of ours is open (module references). */
void phxfs_dev_remove_all(void)
{
	struct phxfs_dev *dev, *tmp;

	list_for_each_entry_safe_reverse(dev, tmp, &phxfs_devs, node) {
		list_del(&dev->node);
		device_destroy(phxfs_class, dev->cdev.dev);
		cdev_del(&dev->cdev);
		phxfs_dev_wait_idle(dev);
		memunmap_pages(&dev->pgmap);
		iounmap(dev->wc);
		phxfs_dev_free(dev);
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
