// SPDX-License-Identifier: GPL-2.0
/*
 * Pins, and the rule of phxfs.ko: device memory goes back to its provider
 * (unpin) only when no page of it is referenced by anyone.
 *
 * Each of our pages has a base reference: memremap_pages() gives
 * MEMORY_DEVICE_GENERIC pages a count of one, and the kernel restores it
 * whenever the count drops to zero. Every reference above the base is a user
 * of the page: a page table entry (vm_insert_pages()), an O_DIRECT bio in
 * flight, a pipe buffer (vmsplice), an io_uring fixed buffer, an RDMA
 * registration. None of those has a bound on how long it may hold a page.
 *
 * So a pin leaves in two steps:
 *  1. phxfs_pin_zap() removes it from every page table (unmap_mapping_pages()
 *     over the owner file's address space reaches fork copies too). GUP
 *     finds our pages only through page tables, and the TLB flush of the
 *     zap waits for any lock-free GUP walk (x86) that read the old entries,
 *     so no new reference can be made through this pin afterwards.
 *  2. phxfs_pin_retire() hands the pin to the device's drain list, whose
 *     work looks at the reference count of each page and unpins only when
 *     every page is down to its base reference. An idle page can become
 *     busy again only through another live pin that maps it, and that pin
 *     holds the device memory itself (pcibar ranges of one owner; the NVIDIA
 *     driver counts persistent pins), so a page seen idle need not be looked
 *     at again.
 * Nothing waits for the drain: UNMAP, munmap, exit and cudaFree return at
 * once, and memory that someone keeps referenced stays out of reuse for as
 * long as they keep it. The look is repeated with a growing delay (at most a
 * second): the delay decides only when memory comes back, never whether.
 * Each pin holds a module reference, so the module stays while any pin does.
 */
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#include "phxfs.h"

#define PHXFS_DRAIN_MAX_DELAY	HZ

struct phxfs_pin *phxfs_pin_create(struct phxfs_dev *dev, u64 owner,
				   u64 dev_addr, u64 len)
{
	struct phxfs_pin *pin;
	int ret;

	pin = kzalloc(sizeof(*pin), GFP_KERNEL_ACCOUNT);
	if (!pin)
		return ERR_PTR(-ENOMEM);
	pin->dev = dev;
	pin->owner = owner;
	pin->dev_addr = dev_addr;
	pin->len = len;
	INIT_LIST_HEAD(&pin->drain_node);
	ret = dev->ops->pin(dev, pin);
	if (ret) {
		kfree(pin);
		return ERR_PTR(ret);
	}
	/* Our caller holds a file of ours, so the module is live. */
	__module_get(THIS_MODULE);
	atomic64_add(len, &dev->stats.pinned_bytes);
	return pin;
}

/* Out of every page table of the owner file; no-op if never mapped. */
void phxfs_pin_zap(struct phxfs_pin *pin)
{
	if (pin->mapping)
		unmap_mapping_pages(pin->mapping, pin->pgoff,
				    pin->len >> PAGE_SHIFT, true);
}

/* Whether every page is down to its base reference; remembers progress. */
static bool phxfs_pin_idle(struct phxfs_pin *pin)
{
	struct phxfs_dev *dev = pin->dev;
	unsigned long npages = pin->len >> PAGE_SHIFT;

	for (; pin->idle_from < npages; pin->idle_from++) {
		struct page *page = dev->ops->page(dev, pin, pin->idle_from);

		if (page_ref_count(page) != 1)
			return false;
		if (!(pin->idle_from % 4096))
			cond_resched();
	}
	return true;
}

static void phxfs_pin_free(struct phxfs_pin *pin)
{
	struct phxfs_dev *dev = pin->dev;

	dev->ops->unpin(dev, pin);
	atomic64_sub(pin->len, &dev->stats.pinned_bytes);
	phxfs_dbg(dev, "unpin %llx+%llx\n", pin->dev_addr, pin->len);
	kfree(pin);
	module_put(THIS_MODULE);
}

/*
 * The pin is out of every page table (phxfs_pin_zap(), or its VMAs are
 * gone): unpin it now if no page is referenced, else once none is. With
 * may_sleep false (under an mmap lock) the drain work does all of it.
 */
void phxfs_pin_retire(struct phxfs_pin *pin, bool may_sleep)
{
	struct phxfs_dev *dev = pin->dev;

	/* Never in a page table (a failed MAP): nobody can reference it. */
	if (!pin->mapping || (may_sleep && phxfs_pin_idle(pin))) {
		phxfs_pin_free(pin);
		return;
	}
	atomic64_inc(&dev->stats.draining);
	atomic64_add(pin->len, &dev->stats.draining_bytes);
	spin_lock(&dev->drain_lock);
	list_add_tail(&pin->drain_node, &dev->drain_list);
	dev->drain_delay = 1;
	spin_unlock(&dev->drain_lock);
	mod_delayed_work(system_wq, &dev->drain_work, 0);
}

static void phxfs_drain_work(struct work_struct *work)
{
	struct phxfs_dev *dev = container_of(to_delayed_work(work),
					     struct phxfs_dev, drain_work);
	struct phxfs_pin *pin, *tmp;
	unsigned long delay = 0;
	LIST_HEAD(todo);

	spin_lock(&dev->drain_lock);
	list_splice_init(&dev->drain_list, &todo);
	spin_unlock(&dev->drain_lock);

	list_for_each_entry_safe(pin, tmp, &todo, drain_node) {
		if (!phxfs_pin_idle(pin))
			continue;
		list_del(&pin->drain_node);
		atomic64_dec(&dev->stats.draining);
		atomic64_sub(pin->len, &dev->stats.draining_bytes);
		phxfs_pin_free(pin);
	}

	spin_lock(&dev->drain_lock);
	list_splice(&todo, &dev->drain_list);
	if (!list_empty(&dev->drain_list)) {
		delay = dev->drain_delay;
		dev->drain_delay = min_t(unsigned long, delay * 2,
					 PHXFS_DRAIN_MAX_DELAY);
	}
	spin_unlock(&dev->drain_lock);
	if (delay)
		queue_delayed_work(system_wq, &dev->drain_work, delay);
}

void phxfs_drain_init(struct phxfs_dev *dev)
{
	spin_lock_init(&dev->drain_lock);
	INIT_LIST_HEAD(&dev->drain_list);
	INIT_DELAYED_WORK(&dev->drain_work, phxfs_drain_work);
	dev->drain_delay = 1;
}

/* At unload: no pin is left (module references), but the work may run. */
void phxfs_drain_exit(struct phxfs_dev *dev)
{
	cancel_delayed_work_sync(&dev->drain_work);
	WARN_ON(!list_empty(&dev->drain_list));
}
