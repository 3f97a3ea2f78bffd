// SPDX-License-Identifier: GPL-2.0
/*
 * Open, mmap and the MAP/UNMAP ioctls of /dev/phxfsN.
 *
 * mmap() only reserves a VMA. MAP pins a device address range through the
 * provider and inserts its struct pages at a user address inside that VMA;
 * O_DIRECT I/O on the address then DMAs to and from device memory. UNMAP,
 * munmap, close and process exit undo it.
 *
 * Each mmap gets file offsets of its own (vm_pgoff) on the device file, so
 * that unmap_mapping_range() can remove one mapping from every VMA that
 * shares it (fork copies included) without the owner's mmap lock.
 *
 * Lock order: mmap_lock, phxfs_vma.lock, phxfs_pin.lock, i_mmap_rwsem (inside
 * unmap_mapping_range). A provider's revoke path takes phxfs_pin.lock only.
 */
#include <linux/fs.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kref.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "phxfs.h"

/* vm_insert_pages() batch: one page of struct page pointers. */
#define PHXFS_BATCH (PAGE_SIZE / sizeof(struct page *))

/* State of one mmap, shared by the VMA and any fork copy of it. */
struct phxfs_vma {
	struct kref ref;
	struct phxfs_dev *dev;
	struct address_space *mapping;
	pgoff_t pgoff;			/* file offset of the VMA's start */
	struct mutex lock;		/* protects maps */
	struct list_head maps;
};

/* One MAP: pages [first, first + len / PAGE_SIZE) of the VMA. */
struct phxfs_map {
	struct list_head node;
	unsigned long first;
	struct phxfs_pin pin;
};

static void phxfs_pin_zap(struct phxfs_pin *pin)
{
	if (pin->mapping)
		unmap_mapping_range(pin->mapping, pin->start, pin->len, 1);
}

/*
 * Waits until no I/O holds a page of the pin (phxfs_page_busy()),
 * for at most PHXFS_IO_WAIT: a long-term pin (an io_uring fixed buffer) may
 * hold pages until its owner lets go, and neither the GPU driver's callback
 * nor process exit may hang on that. Returns false on timeout.
 */
#define PHXFS_IO_WAIT (10 * HZ)

static bool phxfs_pin_wait_idle(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	unsigned long i, npages = pin->len >> PAGE_SHIFT;
	unsigned long deadline = jiffies + PHXFS_IO_WAIT;
	struct page *page;

	for (i = 0; i < npages; i++) {
		page = dev->ops->page(dev, pin, i);
		while (phxfs_page_busy(page)) {
			if (time_after(jiffies, deadline)) {
				dev_warn(dev->device,
					 "%llx+%llx still pinned (by io_uring?) after 10 s; letting go\n",
					 pin->dev_addr, pin->len);
				return false;
			}
			usleep_range(100, 1000);
		}
	}
	return true;
}

/*
 * The provider's device memory is going away (the GPU driver frees it):
 * remove the pages from every page table and wait for I/O in flight on them
 * (bounded, see phxfs_pin_wait_idle()). Later access faults (SIGBUS) and later I/O fails with EFAULT; UNMAP still
 * succeeds. Returns true when the provider must now free its pin state;
 * false when the pin is being released anyway or MAP has not seen it yet
 * (then MAP calls ->drop()). May sleep; takes no lock of the provider's.
 */
bool phxfs_pin_revoke(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	enum phxfs_pin_state was;

	mutex_lock(&pin->lock);
	was = pin->state;
	if (was == PHXFS_PIN_NEW || was == PHXFS_PIN_HELD)
		pin->state = PHXFS_PIN_REVOKED;
	if (was == PHXFS_PIN_HELD) {
		phxfs_pin_zap(pin);
		phxfs_pin_wait_idle(dev, pin);
		atomic64_inc(&dev->stats.revokes);
	}
	mutex_unlock(&pin->lock);
	phxfs_dbg(dev, "revoke %llx+%llx: state %d\n", pin->dev_addr, pin->len,
		  was);
	return was == PHXFS_PIN_HELD;
}

/*
 * UNMAP, munmap, exit, or a failed MAP: out of page tables, then unpinned.
 * Where the provider may hand the memory to someone else once unpinned (a
 * GPU driver), I/O still in flight on the pages is waited for first.
 */
static void phxfs_pin_release(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	enum phxfs_pin_state was;

	mutex_lock(&pin->lock);
	was = pin->state;
	pin->state = PHXFS_PIN_FREED;
	phxfs_pin_zap(pin);
	if (was == PHXFS_PIN_HELD && dev->ops->unpin_waits_for_io)
		phxfs_pin_wait_idle(dev, pin);
	mutex_unlock(&pin->lock);
	/* Outside the lock: the provider may wait for its own revoke path. */
	if (was == PHXFS_PIN_HELD)
		dev->ops->unpin(dev, pin);
}

static void phxfs_map_free(struct phxfs_dev *dev, struct phxfs_map *map)
{
	phxfs_pin_release(dev, &map->pin);
	atomic64_sub(map->pin.len, &dev->stats.mapped_bytes);
	atomic64_inc(&dev->stats.unmaps);
	list_del(&map->node);
	kfree(map);
}

static void phxfs_vma_release(struct kref *ref)
{
	struct phxfs_vma *pv = container_of(ref, struct phxfs_vma, ref);
	struct phxfs_map *map, *tmp;

	list_for_each_entry_safe(map, tmp, &pv->maps, node)
		phxfs_map_free(pv->dev, map);
	kfree(pv);
}

/* A fork copy (after MADV_DOFORK) or mremap's temporary copy. */
static void phxfs_vma_open(struct vm_area_struct *vma)
{
	struct phxfs_vma *pv = vma->vm_private_data;

	kref_get(&pv->ref);
}

/* munmap or exit: the page tables of this VMA are gone already. */
static void phxfs_vma_close(struct vm_area_struct *vma)
{
	struct phxfs_vma *pv = vma->vm_private_data;

	kref_put(&pv->ref, phxfs_vma_release);
}

/* A mapping is addressed by its VMA's start: refuse to cut or move it. */
static int phxfs_vma_may_split(struct vm_area_struct *vma, unsigned long addr)
{
	return -EINVAL;
}

static int phxfs_vma_mremap(struct vm_area_struct *vma)
{
	return -EINVAL;
}

static const struct vm_operations_struct phxfs_vm_ops = {
	.open = phxfs_vma_open,
	.close = phxfs_vma_close,
	.may_split = phxfs_vma_may_split,
	.mremap = phxfs_vma_mremap,
};

static int phxfs_mmap(struct file *filp, struct vm_area_struct *vma)
{
	struct phxfs_dev *dev = filp->private_data;
	struct phxfs_vma *pv;

	/* Offsets belong to MAP; the file offset is ours (see above). */
	if (!(vma->vm_flags & VM_SHARED) || vma->vm_pgoff)
		return -EINVAL;
	pv = kzalloc(sizeof(*pv), GFP_KERNEL);
	if (!pv)
		return -ENOMEM;
	kref_init(&pv->ref);
	mutex_init(&pv->lock);
	INIT_LIST_HEAD(&pv->maps);
	pv->dev = dev;
	pv->mapping = filp->f_mapping;
	pv->pgoff = atomic64_fetch_add(vma_pages(vma), &dev->next_pgoff);

	vma->vm_pgoff = pv->pgoff;
	vma->vm_private_data = pv;
	vma->vm_ops = &phxfs_vm_ops;
	vma->vm_page_prot = pgprot_writecombine(vma->vm_page_prot);
	/*
	 * VM_MIXEDMAP (not VM_PFNMAP): the ptes point at struct pages, which
	 * is what lets GUP and so O_DIRECT use them. Set here, under the mmap
	 * write lock, because MAP calls vm_insert_pages() under the read lock.
	 */
	phxfs_vm_flags_set(vma, VM_MIXEDMAP | VM_DONTEXPAND | VM_DONTDUMP |
			   VM_DONTCOPY);
	phxfs_dbg(dev, "mmap %lu pages at %lx, pgoff %lu\n", vma_pages(vma),
		  vma->vm_start, pv->pgoff);
	return 0;
}

static int phxfs_check_map(struct phxfs_dev *dev, struct phxfs_ioctl_map *req)
{
	u64 end;

	if (req->size != sizeof(*req) || req->flags || !req->len)
		return -EINVAL;
	if (!IS_ALIGNED(req->dev_addr, dev->page_size) ||
	    !IS_ALIGNED(req->len, dev->page_size) ||
	    !PAGE_ALIGNED(req->vaddr))
		return -EINVAL;
	if (check_add_overflow(req->dev_addr, req->len, &end) ||
	    check_add_overflow(req->vaddr, req->len, &end) ||
	    req->vaddr + req->len > TASK_SIZE)
		return -EINVAL;
	return 0;
}

/* The phxfs VMA of this file holding all of [vaddr, vaddr + len). */
static struct vm_area_struct *phxfs_find_vma(struct file *filp, u64 vaddr,
					     u64 len)
{
	struct vm_area_struct *vma = vma_lookup(current->mm, vaddr);

	if (!vma || vma->vm_ops != &phxfs_vm_ops || vma->vm_file != filp ||
	    vaddr + len > vma->vm_end)
		return NULL;
	return vma;
}

static bool phxfs_overlaps(struct phxfs_vma *pv, unsigned long first,
			   unsigned long n)
{
	struct phxfs_map *map;

	list_for_each_entry(map, &pv->maps, node)
		if (first < map->first + (map->pin.len >> PAGE_SHIFT) &&
		    map->first < first + n)
			return true;
	return false;
}

static int phxfs_insert(struct phxfs_dev *dev, struct vm_area_struct *vma,
			struct phxfs_map *map, unsigned long addr)
{
	unsigned long npages = map->pin.len >> PAGE_SHIFT;
	unsigned long done = 0, i, n, left;
	struct page **batch;
	int ret = 0;

	batch = kmalloc_array(PHXFS_BATCH, sizeof(*batch), GFP_KERNEL);
	if (!batch)
		return -ENOMEM;
	while (done < npages) {
		n = min_t(unsigned long, npages - done, PHXFS_BATCH);
		for (i = 0; i < n; i++)
			batch[i] = dev->ops->page(dev, &map->pin, done + i);
		left = n;
		ret = vm_insert_pages(vma, addr + (done << PAGE_SHIFT), batch,
				      &left);
		done += n - left;
		if (ret)
			break;
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		cond_resched();
	}
	kfree(batch);
	return ret;
}

/*
 * Pins without pin->lock held (a provider's revoke path may hold the
 * provider's locks while it waits for pin->lock), inserts with it held.
 */
static int phxfs_pin_map(struct phxfs_dev *dev, struct vm_area_struct *vma,
			 struct phxfs_map *map, unsigned long addr)
{
	struct phxfs_pin *pin = &map->pin;
	int ret;

	ret = dev->ops->pin(dev, pin);
	if (ret)
		return ret;
	mutex_lock(&pin->lock);
	if (pin->state == PHXFS_PIN_REVOKED) {
		/* Freed while we were pinning it. */
		mutex_unlock(&pin->lock);
		dev->ops->drop(dev, pin);
		return -EFAULT;
	}
	pin->state = PHXFS_PIN_HELD;
	ret = phxfs_insert(dev, vma, map, addr);
	mutex_unlock(&pin->lock);
	if (ret)
		phxfs_pin_release(dev, pin);
	return ret;
}

/* MAP with the VMA found and pv->lock held. */
static int phxfs_map_locked(struct phxfs_dev *dev, struct vm_area_struct *vma,
			    struct phxfs_ioctl_map *req)
{
	struct phxfs_vma *pv = vma->vm_private_data;
	unsigned long first = (req->vaddr - vma->vm_start) >> PAGE_SHIFT;
	struct phxfs_map *map;
	int ret;

	if (phxfs_overlaps(pv, first, req->len >> PAGE_SHIFT))
		return -EBUSY;
	map = kzalloc(sizeof(*map), GFP_KERNEL);
	if (!map)
		return -ENOMEM;
	map->first = first;
	map->pin.dev_addr = req->dev_addr;
	map->pin.len = req->len;
	mutex_init(&map->pin.lock);
	map->pin.mapping = pv->mapping;
	map->pin.start = (loff_t)(pv->pgoff + first) << PAGE_SHIFT;
	ret = phxfs_pin_map(dev, vma, map, req->vaddr);
	if (ret) {
		kfree(map);
		return ret;
	}
	list_add_tail(&map->node, &pv->maps);
	atomic64_inc(&dev->stats.maps);
	atomic64_add(req->len, &dev->stats.mapped_bytes);
	atomic64_add(req->len, &dev->stats.mapped_total);
	phxfs_dbg(dev, "map %llx+%llx at %llx\n", req->dev_addr, req->len,
		  req->vaddr);
	return 0;
}

/* UNMAP of exactly what one MAP mapped, with pv->lock held. */
static int phxfs_unmap_locked(struct phxfs_dev *dev, struct vm_area_struct *vma,
			      struct phxfs_ioctl_map *req)
{
	struct phxfs_vma *pv = vma->vm_private_data;
	unsigned long first = (req->vaddr - vma->vm_start) >> PAGE_SHIFT;
	struct phxfs_map *map;

	list_for_each_entry(map, &pv->maps, node) {
		if (map->first != first || map->pin.len != req->len ||
		    map->pin.dev_addr != req->dev_addr)
			continue;
		phxfs_map_free(dev, map);
		phxfs_dbg(dev, "unmap %llx+%llx at %llx\n", req->dev_addr,
			  req->len, req->vaddr);
		return 0;
	}
	return -ENOENT;
}

static int phxfs_ioctl_map_unmap(struct file *filp, unsigned int cmd,
				 void __user *arg)
{
	struct phxfs_dev *dev = filp->private_data;
	struct mm_struct *mm = current->mm;
	struct phxfs_ioctl_map req;
	struct vm_area_struct *vma;
	struct phxfs_vma *pv;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	ret = phxfs_check_map(dev, &req);
	if (ret)
		return ret;
	mmap_read_lock(mm);
	vma = phxfs_find_vma(filp, req.vaddr, req.len);
	if (!vma) {
		mmap_read_unlock(mm);
		return -EINVAL;
	}
	pv = vma->vm_private_data;
	mutex_lock(&pv->lock);
	if (cmd == PHXFS_IOCTL_MAP)
		ret = phxfs_map_locked(dev, vma, &req);
	else
		ret = phxfs_unmap_locked(dev, vma, &req);
	mutex_unlock(&pv->lock);
	mmap_read_unlock(mm);
	return ret;
}

static int phxfs_ioctl_info(struct phxfs_dev *dev, void __user *arg)
{
	struct phxfs_ioctl_info info = {};
	u32 size;

	if (get_user(size, (u32 __user *)arg))
		return -EFAULT;
	if (size != sizeof(info))
		return -EINVAL;
	info.size = sizeof(info);
	info.abi_version = PHXFS_ABI_VERSION;
	info.provider = dev->ops->id;
	info.bar_size = dev->bar_size;
	info.page_size = dev->page_size;
	info.pci_domain = pci_domain_nr(dev->pdev->bus);
	info.pci_bus = dev->pdev->bus->number;
	info.pci_devfn = dev->pdev->devfn;
	strscpy(info.name, dev->ops->name, sizeof(info.name));
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long phxfs_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct phxfs_dev *dev = filp->private_data;
	void __user *uarg = (void __user *)arg;
	long ret;

	switch (cmd) {
	case PHXFS_IOCTL_INFO:
		ret = phxfs_ioctl_info(dev, uarg);
		break;
	case PHXFS_IOCTL_MAP:
	case PHXFS_IOCTL_UNMAP:
		ret = phxfs_ioctl_map_unmap(filp, cmd, uarg);
		break;
	default:
		ret = -ENOTTY;
	}
	if (ret && ret != -ENOTTY) {
		atomic64_inc(&dev->stats.errors);
		phxfs_dbg(dev, "ioctl %x: %ld\n", cmd, ret);
	}
	return ret;
}

static int phxfs_open(struct inode *inode, struct file *filp)
{
	filp->private_data = container_of(inode->i_cdev, struct phxfs_dev,
					  cdev);
	return 0;
}

const struct file_operations phxfs_fops = {
	.owner = THIS_MODULE,
	.open = phxfs_open,
	.mmap = phxfs_mmap,
	.unlocked_ioctl = phxfs_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};
