// SPDX-License-Identifier: GPL-2.0
/*
 * The pcibar provider: a BAR named on the command line is device
 * memory, addressed by byte offset into the BAR.
 *
 *   modprobe phxfs pcibar=0000:00:04.0@2,0000:00:05.0@0
 *
 * Devices are numbered in the order given. The provider claims the BAR
 * (pci_request_region), so no other driver may use it while phxfs holds it;
 * it serves emulated device memory (QEMU's ivshmem) and any PCI device whose
 * BAR is plain prefetchable memory.
 *
 * A BAR has no allocator, so ranges have owners instead: a range pinned
 * through one open file (phxfs_pin.owner) cannot be pinned through another
 * until its pin is unpinned, which pin.c does only once no page of it is
 * referenced. So what one user put in device memory is never seen or
 * changed by another, neither while it is mapped nor afterwards through
 * pages the first user kept referenced (vmsplice, io_uring). Pins of one
 * owner may overlap. A range given back is cleared (pcibar_scrub, on by
 * default), so the next owner does not find what the last one left either.
 */
#include <linux/interval_tree_generic.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/slab.h>

#include "phxfs.h"

static char *pcibar[PHXFS_MAX_DEVICES];
static int npcibar;
module_param_array(pcibar, charp, &npcibar, 0444);
MODULE_PARM_DESC(pcibar,
		 "BARs to serve as device memory: DOMAIN:BUS:DEV.FN@BAR,...");

static bool pcibar_scrub = true;
module_param(pcibar_scrub, bool, 0644);
MODULE_PARM_DESC(pcibar_scrub,
		 "Clear a range when its owner has given it back (default 1)");

/* The ranges held on one BAR, by owner. */
struct pcibar_dev {
	struct mutex lock;
	struct rb_root_cached claims;
};

/* One pinned range: [start, last] in bytes of the BAR. */
struct pcibar_claim {
	struct rb_node rb;
	u64 start;
	u64 last;
	u64 subtree_last;
	u64 owner;
};

#define CLAIM_START(c) ((c)->start)
#define CLAIM_LAST(c) ((c)->last)
INTERVAL_TREE_DEFINE(struct pcibar_claim, rb, u64, subtree_last, CLAIM_START,
		     CLAIM_LAST, static, pcibar_claim);

static int pcibar_pin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	struct pcibar_dev *pb = dev->priv;
	struct pcibar_claim *c, *it;
	u64 end;
	int ret = 0;

	if (check_add_overflow(pin->dev_addr, pin->len, &end) ||
	    end > dev->bar_size)
		return -EINVAL;
	c = kzalloc(sizeof(*c), GFP_KERNEL_ACCOUNT);
	if (!c)
		return -ENOMEM;
	c->start = pin->dev_addr;
	c->last = end - 1;
	c->owner = pin->owner;
	mutex_lock(&pb->lock);
	for (it = pcibar_claim_iter_first(&pb->claims, c->start, c->last); it;
	     it = pcibar_claim_iter_next(it, c->start, c->last)) {
		if (it->owner != c->owner) {
			ret = -EBUSY;
			break;
		}
	}
	if (!ret)
		pcibar_claim_insert(c, &pb->claims);
	mutex_unlock(&pb->lock);
	if (ret) {
		phxfs_dbg(dev, "%llx+%llx is held by another open file\n",
			  pin->dev_addr, pin->len);
		kfree(c);
		return ret;
	}
	pin->priv = c;
	return 0;
}

static struct page *pcibar_page(struct phxfs_dev *dev, struct phxfs_pin *pin,
				unsigned long i)
{
	return phxfs_bar_page(dev, pin->dev_addr + ((u64)i << PAGE_SHIFT));
}

/* Bytes [start, last] of the BAR, through the kernel's (WC) mapping. */
static void pcibar_clear(struct phxfs_dev *dev, u64 start, u64 last)
{
	u64 off;

	for (off = start; off < last; off += PAGE_SIZE) {
		memset(page_address(phxfs_bar_page(dev, off)), 0, PAGE_SIZE);
		if (!(off & ((4UL << 20) - 1)))
			cond_resched();
	}
}

/*
 * Unreferenced (pin.c): free for any owner, after clearing what no other
 * claim still covers (an overlapping pin of the same owner keeps its bytes).
 * Under the lock, so that nobody claims the range while it is cleared.
 */
static void pcibar_unpin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	struct pcibar_dev *pb = dev->priv;
	struct pcibar_claim *c = pin->priv, *it;
	u64 from = c->start;

	mutex_lock(&pb->lock);
	pcibar_claim_remove(c, &pb->claims);
	if (READ_ONCE(pcibar_scrub)) {
		for (it = pcibar_claim_iter_first(&pb->claims, c->start, c->last); it;
		     it = pcibar_claim_iter_next(it, c->start, c->last)) {
			if (it->start > from)
				pcibar_clear(dev, from, it->start - 1);
			from = max(from, it->last + 1);
		}
		if (from <= c->last)
			pcibar_clear(dev, from, c->last);
		wmb(); /* out of the write-combining buffers before a new owner */
	}
	mutex_unlock(&pb->lock);
	kfree(c);
}

static void pcibar_release(struct pci_dev *pdev, int bar, void *priv)
{
	kfree(priv);
	pci_release_region(pdev, bar);
	pci_disable_device(pdev);
	pci_dev_put(pdev);
}

static int pcibar_probe(void);

const struct phxfs_provider_ops phxfs_pcibar_ops = {
	.id = PHXFS_PROVIDER_PCIBAR,
	.name = "pcibar",
	.p2pdma = true,
	.probe = pcibar_probe,
	.pin = pcibar_pin,
	.page = pcibar_page,
	.unpin = pcibar_unpin,
	.release = pcibar_release,
};

static int pcibar_add(const char *spec)
{
	struct pcibar_dev *pb;
	struct pci_dev *pdev;
	int bar, ret;

	pdev = phxfs_pci_spec("pcibar", spec, &bar);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	if (!(pci_resource_flags(pdev, bar) & IORESOURCE_MEM)) {
		pci_err(pdev, "phxfs: BAR%d is not a memory BAR\n", bar);
		ret = -EINVAL;
		goto err_put;
	}
	pb = kzalloc(sizeof(*pb), GFP_KERNEL);
	if (!pb) {
		ret = -ENOMEM;
		goto err_put;
	}
	mutex_init(&pb->lock);
	pb->claims = RB_ROOT_CACHED;
	ret = pci_enable_device_mem(pdev);
	if (ret)
		goto err_free;
	ret = pci_request_region(pdev, bar, "phxfs");
	if (ret) {
		pci_err(pdev, "phxfs: BAR%d is in use by another driver\n",
			bar);
		goto err_disable;
	}
	/* From here on phxfs_dev_add() gives it all back on failure. */
	return phxfs_dev_add(pdev, bar, PAGE_SIZE, &phxfs_pcibar_ops, pb);

err_disable:
	pci_disable_device(pdev);
err_free:
	kfree(pb);
err_put:
	pci_dev_put(pdev);
	return ret;
}

static int pcibar_probe(void)
{
	int i, ret;

	for (i = 0; i < npcibar; i++) {
		ret = pcibar_add(pcibar[i]);
		if (ret)
			return ret;
	}
	return 0;
}
