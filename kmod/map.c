// SPDX-License-Identifier: GPL-2.0
/*
 * mmap and the MAP/UNMAP ioctls of /dev/phxfsN.
 *
 * mmap() only reserves a VMA and gives it a slot of file offsets of its
 * open file (file.c). MAP pins a device address range through the provider
 * and inserts its struct pages at a user address inside that VMA; O_DIRECT
 * I/O on the address then DMAs to and from device memory. UNMAP, munmap,
 * close and process exit undo it, and pin.c gives the memory back once no
 * page of it is referenced.
 *
 * Who holds what: a VMA (and any fork copy of it) holds its phxfs_vma
 * (kref); the phxfs_vma's maple tree holds the pins mapped in it, keyed by
 * their page range in the VMA; UNMAP or the last VMA close passes each pin
 * to pin.c.
 *
 * Lock order: mmap_lock, phxfs_vma.lock, i_mmap_rwsem (unmap_mapping_pages).
 * Providers pin before any of them is taken and unpin from pin.c, so a GPU
 * driver is never called with an mmap lock held.
 */
#include <linux/fs.h>
#include <linux/kref.h>
#include <linux/maple_tree.h>
#include <linux/mm.h>
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
	struct phxfs_file *pf;
	int slot;
	pgoff_t pgoff;			/* file offset of the VMA's start */
	struct mutex lock;		/* serialises MAP and UNMAP in the VMA */
	struct maple_tree pins;		/* page index in the VMA -> pin */
};

/* A pin left its VMA (UNMAP, or the VMA is gone): counters, then pin.c. */
static void phxfs_pin_unmapped(struct phxfs_file *pf, struct phxfs_pin *pin,
			       bool may_sleep)
{
	atomic_dec(&pf->nr_maps);
	atomic64_sub(pin->len, &pf->dev->stats.mapped_bytes);
	atomic64_inc(&pf->dev->stats.unmaps);
	phxfs_pin_retire(pin, may_sleep);
}

static void phxfs_vma_release(struct kref *ref)
{
	struct phxfs_vma *pv = container_of(ref, struct phxfs_vma, ref);
	struct phxfs_pin *pin;
	unsigned long index = 0;

	/* Every VMA of the slot is gone, and with them the page tables. */
	mt_for_each(&pv->pins, pin, index, ULONG_MAX)
		phxfs_pin_unmapped(pv->pf, pin, false);
	mtree_destroy(&pv->pins);
	ida_free(&pv->pf->slots, pv->slot);
	kfree(pv);
}

/* A fork copy (after MADV_DOFORK). */
static void phxfs_vma_open(struct vm_area_struct *vma)
{
	struct phxfs_vma *pv = vma->vm_private_data;

	kref_get(&pv->ref);
}

/* munmap or exit, under the mmap write lock: the page tables are gone. */
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

int phxfs_mmap(struct file *filp, struct vm_area_struct *vma)
{
	struct phxfs_file *pf = filp->private_data;
	struct phxfs_vma *pv;
	int slot;

	/* Offsets belong to MAP; the file offset is ours (file.c). */
	if (!(vma->vm_flags & VM_SHARED) || vma->vm_pgoff ||
	    vma_pages(vma) > (1UL << PHXFS_SLOT_SHIFT))
		return -EINVAL;
	pv = kzalloc(sizeof(*pv), GFP_KERNEL_ACCOUNT);
	if (!pv)
		return -ENOMEM;
	slot = ida_alloc_max(&pf->slots, PHXFS_MAX_MMAPS - 1,
			     GFP_KERNEL_ACCOUNT);
	if (slot < 0) {
		kfree(pv);
		phxfs_dbg(pf->dev, "mmap: %d mappings of this file already\n",
			  PHXFS_MAX_MMAPS);
		return slot == -ENOSPC ? -ENOMEM : slot;
	}
	kref_init(&pv->ref);
	mutex_init(&pv->lock);
	mt_init(&pv->pins);
	pv->pf = pf;
	pv->slot = slot;
	pv->pgoff = (pgoff_t)slot << PHXFS_SLOT_SHIFT;

	vma->vm_pgoff = pv->pgoff;
	vma->vm_private_data = pv;
	vma->vm_ops = &phxfs_vm_ops;
	/* As the kernel maps the pages: P2PDMA uncached (memremap_pages()). */
	vma->vm_page_prot = pf->dev->p2p_kaddr ? pgprot_noncached(vma->vm_page_prot) :
						 pgprot_writecombine(vma->vm_page_prot);
	/*
	 * VM_MIXEDMAP (not VM_PFNMAP): the ptes point at struct pages, which
	 * is what lets GUP and so O_DIRECT use them. Set here, under the mmap
	 * write lock, because MAP calls vm_insert_pages() under the read lock.
	 */
	phxfs_vm_flags_set(vma, VM_MIXEDMAP | VM_DONTEXPAND | VM_DONTDUMP |
			   VM_DONTCOPY);
	phxfs_dbg(pf->dev, "mmap %lu pages at %lx, slot %d\n", vma_pages(vma),
		  vma->vm_start, slot);
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
	    end > TASK_SIZE)
		return -EINVAL;
	return 0;
}

/* The VMA of this open file holding all of [vaddr, vaddr + len). */
static struct vm_area_struct *phxfs_find_vma(struct file *filp, u64 vaddr,
					     u64 len)
{
	struct vm_area_struct *vma = vma_lookup(current->mm, vaddr);

	if (!vma || vma->vm_ops != &phxfs_vm_ops || vma->vm_file != filp ||
	    vaddr + len > vma->vm_end)
		return NULL;
	return vma;
}

static int phxfs_insert(struct phxfs_dev *dev, struct vm_area_struct *vma,
			struct phxfs_pin *pin, unsigned long addr)
{
	unsigned long npages = pin->len >> PAGE_SHIFT;
	unsigned long done = 0, i, n, left;
	struct page **batch;
	int ret = 0;

	batch = kmalloc_array(PHXFS_BATCH, sizeof(*batch), GFP_KERNEL);
	if (!batch)
		return -ENOMEM;
	while (done < npages) {
		n = min_t(unsigned long, npages - done, PHXFS_BATCH);
		for (i = 0; i < n; i++)
			batch[i] = dev->ops->page(dev, pin, done + i);
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

/* Puts a new pin into the VMA at req->vaddr: its tree, then its ptes. */
static int phxfs_map_into(struct file *filp, struct phxfs_pin *pin,
			  struct phxfs_ioctl_map *req)
{
	struct vm_area_struct *vma;
	struct phxfs_vma *pv;
	unsigned long last;
	int ret;

	vma = phxfs_find_vma(filp, req->vaddr, req->len);
	if (!vma)
		return -EINVAL;
	pv = vma->vm_private_data;
	mutex_lock(&pv->lock);
	pin->first = (req->vaddr - vma->vm_start) >> PAGE_SHIFT;
	last = pin->first + (req->len >> PAGE_SHIFT) - 1;
	ret = mtree_insert_range(&pv->pins, pin->first, last, pin,
				 GFP_KERNEL_ACCOUNT);
	if (ret) {
		ret = ret == -EEXIST ? -EBUSY : ret;
		goto out;
	}
	/* From here on the pin may be in page tables. */
	pin->mapping = filp->f_mapping;
	pin->pgoff = pv->pgoff + pin->first;
	ret = phxfs_insert(pin->dev, vma, pin, req->vaddr);
	if (ret) {
		phxfs_pin_zap(pin);
		mtree_erase(&pv->pins, pin->first);
	}
out:
	mutex_unlock(&pv->lock);
	return ret;
}

static int phxfs_map(struct file *filp, struct phxfs_ioctl_map *req)
{
	struct phxfs_file *pf = filp->private_data;
	struct phxfs_dev *dev = pf->dev;
	struct phxfs_pin *pin;
	int ret;

	if (atomic_inc_return(&pf->nr_maps) > PHXFS_MAX_MAPS) {
		ret = -ENOSPC;
		goto err_count;
	}
	/* A bad address is EINVAL before the provider is asked anything. */
	ret = mmap_read_lock_killable(current->mm);
	if (ret)
		goto err_count;
	if (!phxfs_find_vma(filp, req->vaddr, req->len))
		ret = -EINVAL;
	mmap_read_unlock(current->mm);
	if (ret)
		goto err_count;
	pin = phxfs_pin_create(dev, pf->owner, req->dev_addr, req->len);
	if (IS_ERR(pin)) {
		ret = PTR_ERR(pin);
		goto err_count;
	}
	ret = mmap_read_lock_killable(current->mm);
	if (ret)
		goto err_pin;
	ret = phxfs_map_into(filp, pin, req);
	mmap_read_unlock(current->mm);
	if (ret)
		goto err_pin;
	atomic64_inc(&dev->stats.maps);
	atomic64_add(req->len, &dev->stats.mapped_bytes);
	atomic64_add(req->len, &dev->stats.mapped_total);
	phxfs_dbg(dev, "map %llx+%llx at %llx\n", req->dev_addr, req->len,
		  req->vaddr);
	return 0;

err_pin:
	phxfs_pin_retire(pin, true);
err_count:
	atomic_dec(&pf->nr_maps);
	return ret;
}

/* UNMAP of exactly what one MAP mapped. */
static int phxfs_unmap(struct file *filp, struct phxfs_ioctl_map *req)
{
	struct phxfs_file *pf = filp->private_data;
	struct phxfs_pin *pin = NULL;
	struct vm_area_struct *vma;
	struct phxfs_vma *pv;
	unsigned long first;
	int ret;

	ret = mmap_read_lock_killable(current->mm);
	if (ret)
		return ret;
	vma = phxfs_find_vma(filp, req->vaddr, req->len);
	if (!vma) {
		mmap_read_unlock(current->mm);
		return -EINVAL;
	}
	pv = vma->vm_private_data;
	first = (req->vaddr - vma->vm_start) >> PAGE_SHIFT;
	mutex_lock(&pv->lock);
	pin = mtree_load(&pv->pins, first);
	if (pin && pin->first == first && pin->len == req->len &&
	    pin->dev_addr == req->dev_addr) {
		phxfs_pin_zap(pin);
		mtree_erase(&pv->pins, first);
	} else {
		pin = NULL;
	}
	mutex_unlock(&pv->lock);
	mmap_read_unlock(current->mm);
	if (!pin)
		return -ENOENT;

	phxfs_dbg(pf->dev, "unmap %llx+%llx at %llx\n", req->dev_addr, req->len,
		  req->vaddr);
	phxfs_pin_unmapped(pf, pin, true);
	return 0;
}

long phxfs_ioctl_map(struct file *filp, unsigned int cmd, void __user *arg)
{
	struct phxfs_file *pf = filp->private_data;
	struct phxfs_ioctl_map req;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	ret = phxfs_check_map(pf->dev, &req);
	if (ret)
		return ret;
	return cmd == PHXFS_IOCTL_MAP ? phxfs_map(filp, &req) :
					phxfs_unmap(filp, &req);
}
