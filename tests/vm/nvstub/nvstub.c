// SPDX-License-Identifier: GPL-2.0
/*
 * A stand-in for the NVIDIA driver's persistent peer-to-peer interface, for
 * phxfs's VM suite only (never installed): it binds the ivshmem device named
 * by bdf as a PCI driver called "nvidia" and exports
 * nvidia_p2p_get_pages_persistent() and nvidia_p2p_put_pages_persistent()
 * over its BAR, so that phxfs.ko's real nvidia provider runs in QEMU. "GPU
 * memory" is handed out in 64 KiB pages at made-up GPU virtual addresses,
 * with neighbouring pages swapped in the BAR so that only a provider that
 * reads the page table finds the right bytes.
 *
 * As the real driver promises for persistent pins: freeing memory (cudaFree)
 * removes its virtual address at once, but its GPU pages go back to the
 * allocator only when the last persistent pin of them is put. A new
 * allocation takes the lowest free GPU pages, so memory given back too early
 * is handed to the next allocation, which the tests look for.
 *
 * debugfs, /sys/kernel/debug/nvstub/:
 *   alloc  write a byte count; read back "VA" of the last allocation
 *   free   write a VA: frees it like cudaFree
 *   pages  read: one "VA BAR_OFFSET" line per 64 KiB page allocated
 *   held   read: GPU pages freed but still pinned
 *   fail   write N: the Nth pin request from now fails with -ENOMEM (0: off)
 *   bar    read and write the BAR at file offset = BAR offset (what a GPU's
 *          copy engine would do; the fake CUDA driver's memcpy uses it)
 * Module parameter persistent=0 makes pins fail with -ENOTSUPP, as on a
 * MIG-enabled GPU.
 */
#include <linux/bitmap.h>
#include <linux/io.h>
#include <linux/debugfs.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "nv-p2p-abi.h"

#define GPU_PAGE	(64UL << 10)
#define VA_BASE		0x7e0000000000ULL

static char *bdf;
module_param(bdf, charp, 0444);
MODULE_PARM_DESC(bdf, "PCI device whose BAR is the GPU memory");
static int bar = 2;
module_param(bar, int, 0444);
MODULE_PARM_DESC(bar, "BAR number");
static bool persistent = true;
module_param(persistent, bool, 0644);
MODULE_PARM_DESC(persistent, "Grant persistent pins (0: refuse, as MIG does)");

struct stub_alloc {
	struct list_head node;		/* on stub.allocs, or stub.freed */
	u64 va;
	unsigned long npages;
	unsigned long *page;		/* BAR page index of each GPU page */
	int pins;
	bool freed;
};

struct stub_reg {
	struct list_head node;
	struct stub_alloc *alloc;
	struct nvidia_p2p_page_table table;
	struct nvidia_p2p_page *pages;
};

static struct {
	struct pci_dev *pdev;
	phys_addr_t start;
	void __iomem *va;
	size_t len;
	unsigned long npages;
	unsigned long *used;
	u64 next_va;
	u64 last_va;
	int fail_in;
	struct mutex lock;
	struct list_head allocs;	/* live: have a virtual address */
	struct list_head freed;		/* freed, pages still pinned */
	struct list_head regs;
	struct dentry *dir;
} stub;

static struct stub_alloc *stub_find(u64 va, u64 len)
{
	struct stub_alloc *a;

	list_for_each_entry(a, &stub.allocs, node)
		if (va >= a->va && va + len <= a->va + a->npages * GPU_PAGE)
			return a;
	return NULL;
}

static int __maybe_unused stub_alloc(u64 bytes)
{
	unsigned long n = DIV_ROUND_UP(bytes, GPU_PAGE), i, p = 0;
	struct stub_alloc *a;

	if (!n)
		return -EINVAL;
	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return -ENOMEM;
	a->page = kcalloc(n, sizeof(*a->page), GFP_KERNEL);
	if (!a->page) {
		kfree(a);
		return -ENOMEM;
	}
	for (i = 0; i < n; i++, p++) {
		p = find_next_zero_bit(stub.used, stub.npages, p);
		if (p >= stub.npages)
			goto err_full;
		a->page[i] = p;
	}
	for (i = 0; i < n; i++)
		set_bit(a->page[i], stub.used);
	/* Swap neighbours: contiguous VA, scattered BAR pages. */
	for (i = 0; i + 1 < n; i += 2)
		swap(a->page[i], a->page[i + 1]);
	a->va = stub.next_va;
	a->npages = n;
	stub.next_va += ALIGN(n * GPU_PAGE, 2UL << 20) + (2UL << 20);
	stub.last_va = a->va;
	list_add_tail(&a->node, &stub.allocs);
	return 0;

err_full:
	kfree(a->page);
	kfree(a);
	return -ENOSPC;
}

/* The GPU pages go back to the allocator: only when nothing pins them. */
static void stub_alloc_destroy(struct stub_alloc *a)
{
	unsigned long i;

	list_del(&a->node);
	for (i = 0; i < a->npages; i++)
		clear_bit(a->page[i], stub.used);
	kfree(a->page);
	kfree(a);
}

/* cudaFree: the address goes now, the pages when the last pin does. */
static int __maybe_unused stub_free(u64 va)
{
	struct stub_alloc *a = NULL, *it;

	mutex_lock(&stub.lock);
	list_for_each_entry(it, &stub.allocs, node)
		if (it->va == va)
			a = it;
	if (a && a->pins) {
		a->freed = true;
		list_move_tail(&a->node, &stub.freed);
	} else if (a) {
		stub_alloc_destroy(a);
	}
	mutex_unlock(&stub.lock);
	return a ? 0 : -EINVAL;
}

static void stub_reg_free(struct stub_reg *r)
{
	list_del(&r->node);
	kfree(r->table.pages);
	kfree(r->pages);
	kfree(r);
}

int nvidia_p2p_get_pages_persistent(u64 virtual_address, u64 length,
				    struct nvidia_p2p_page_table **page_table,
				    u32 flags)
{
	unsigned long first, i, n = length / GPU_PAGE;
	struct stub_alloc *a;
	struct stub_reg *r;
	int ret = -EINVAL;

	if (!persistent)
		return -ENOTSUPP;
	if (!IS_ALIGNED(virtual_address | length, GPU_PAGE) || !length || flags)
		return -EINVAL;
	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	r->pages = kcalloc(n, sizeof(*r->pages), GFP_KERNEL);
	r->table.pages = kcalloc(n, sizeof(*r->table.pages), GFP_KERNEL);
	if (!r->pages || !r->table.pages) {
		ret = -ENOMEM;
		goto err_free;
	}
	mutex_lock(&stub.lock);
	if (stub.fail_in && !--stub.fail_in) {
		ret = -ENOMEM;
		goto err_unlock;
	}
	a = stub_find(virtual_address, length);
	if (!a)
		goto err_unlock;
	first = (virtual_address - a->va) / GPU_PAGE;
	for (i = 0; i < n; i++) {
		r->pages[i].physical_address = stub.start +
			a->page[first + i] * GPU_PAGE;
		r->table.pages[i] = &r->pages[i];
	}
	r->table.version = NVIDIA_P2P_PAGE_TABLE_VERSION;
	r->table.page_size = NVIDIA_P2P_PAGE_SIZE_64KB;
	r->table.entries = n;
	r->alloc = a;
	a->pins++;
	list_add_tail(&r->node, &stub.regs);
	mutex_unlock(&stub.lock);
	*page_table = &r->table;
	return 0;

err_unlock:
	mutex_unlock(&stub.lock);
err_free:
	kfree(r->pages);
	kfree(r->table.pages);
	kfree(r);
	return ret;
}
EXPORT_SYMBOL(nvidia_p2p_get_pages_persistent);

int nvidia_p2p_put_pages_persistent(u64 virtual_address,
				    struct nvidia_p2p_page_table *page_table,
				    u32 flags)
{
	struct stub_reg *r, *found = NULL;
	struct stub_alloc *a;

	mutex_lock(&stub.lock);
	list_for_each_entry(r, &stub.regs, node)
		if (&r->table == page_table)
			found = r;
	if (found) {
		a = found->alloc;
		stub_reg_free(found);
		if (!--a->pins && a->freed)
			stub_alloc_destroy(a);
	}
	mutex_unlock(&stub.lock);
	return found ? 0 : -EINVAL;
}
EXPORT_SYMBOL(nvidia_p2p_put_pages_persistent);

/*
 * The debugfs files. NVIDIA's license may not use debugfs (GPL-only), so the
 * proprietary variant (../nvstub_prop) has none: it only has to load.
 */
#ifndef NVSTUB_PROPRIETARY
static ssize_t alloc_write(struct file *f, const char __user *ubuf,
			   size_t len, loff_t *pos)
{
	u64 bytes;
	int ret;

	ret = kstrtou64_from_user(ubuf, len, 0, &bytes);
	if (ret)
		return ret;
	mutex_lock(&stub.lock);
	ret = stub_alloc(bytes);
	mutex_unlock(&stub.lock);
	return ret ? ret : len;
}

static int alloc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "0x%llx\n", stub.last_va);
	return 0;
}

static int alloc_open(struct inode *inode, struct file *f)
{
	return single_open(f, alloc_show, NULL);
}

static const struct file_operations alloc_fops = {
	.owner = THIS_MODULE,
	.open = alloc_open,
	.read = seq_read,
	.write = alloc_write,
	.llseek = seq_lseek,
	.release = single_release,
};

static ssize_t free_write(struct file *f, const char __user *ubuf,
			  size_t len, loff_t *pos)
{
	u64 va;
	int ret;

	ret = kstrtou64_from_user(ubuf, len, 0, &va);
	if (ret)
		return ret;
	ret = stub_free(va);
	return ret ? ret : len;
}

static const struct file_operations free_fops = {
	.owner = THIS_MODULE,
	.write = free_write,
};

static int pages_show(struct seq_file *m, void *v)
{
	struct stub_alloc *a;
	unsigned long i;

	mutex_lock(&stub.lock);
	list_for_each_entry(a, &stub.allocs, node)
		for (i = 0; i < a->npages; i++)
			seq_printf(m, "0x%llx %lu\n", a->va + i * GPU_PAGE,
				   a->page[i] * GPU_PAGE);
	mutex_unlock(&stub.lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(pages);

/* Moves up to a page per step between user memory and the BAR. */
static ssize_t bar_io(char __user *ubuf, size_t len, loff_t *pos, bool write)
{
	size_t done = 0, n;
	void *buf;

	if (*pos < 0 || *pos >= stub.len)
		return 0;
	len = min_t(size_t, len, stub.len - *pos);
	buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	while (done < len) {
		n = min_t(size_t, len - done, PAGE_SIZE);
		if (write) {
			if (copy_from_user(buf, ubuf + done, n))
				break;
			memcpy_toio(stub.va + *pos + done, buf, n);
		} else {
			memcpy_fromio(buf, stub.va + *pos + done, n);
			if (copy_to_user(ubuf + done, buf, n))
				break;
		}
		done += n;
	}
	kfree(buf);
	*pos += done;
	return done ? done : -EFAULT;
}

static ssize_t bar_read(struct file *f, char __user *ubuf, size_t len,
			loff_t *pos)
{
	return bar_io(ubuf, len, pos, false);
}

static ssize_t bar_write(struct file *f, const char __user *ubuf, size_t len,
			 loff_t *pos)
{
	return bar_io((char __user *)ubuf, len, pos, true);
}

static const struct file_operations bar_fops = {
	.owner = THIS_MODULE,
	.read = bar_read,
	.write = bar_write,
	.llseek = default_llseek,
};

/* GPU pages freed by cudaFree and still pinned, held from reuse. */
static int held_show(struct seq_file *m, void *v)
{
	struct stub_alloc *a;
	unsigned long n = 0;

	mutex_lock(&stub.lock);
	list_for_each_entry(a, &stub.freed, node)
		n += a->npages;
	mutex_unlock(&stub.lock);
	seq_printf(m, "%lu\n", n);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(held);

static ssize_t fail_write(struct file *f, const char __user *ubuf, size_t len,
			  loff_t *pos)
{
	int n, ret;

	ret = kstrtoint_from_user(ubuf, len, 0, &n);
	if (ret)
		return ret;
	mutex_lock(&stub.lock);
	stub.fail_in = max(n, 0);
	mutex_unlock(&stub.lock);
	return len;
}

static const struct file_operations fail_fops = {
	.owner = THIS_MODULE,
	.write = fail_write,
};

static void stub_debugfs_init(void)
{
	stub.dir = debugfs_create_dir("nvstub", NULL);
	debugfs_create_file("alloc", 0600, stub.dir, NULL, &alloc_fops);
	debugfs_create_file("free", 0200, stub.dir, NULL, &free_fops);
	debugfs_create_file("pages", 0400, stub.dir, NULL, &pages_fops);
	debugfs_create_file("held", 0400, stub.dir, NULL, &held_fops);
	debugfs_create_file("fail", 0200, stub.dir, NULL, &fail_fops);
	debugfs_create_file("bar", 0600, stub.dir, NULL, &bar_fops);
}

static void stub_debugfs_exit(void)
{
	debugfs_remove_recursive(stub.dir);
}
#else
static void stub_debugfs_init(void)
{
}

static void stub_debugfs_exit(void)
{
}
#endif

/* Bound as "nvidia" to the device named by bdf, like the real driver. */
static int stub_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	return pdev == stub.pdev ? 0 : -ENODEV;
}

static void stub_remove(struct pci_dev *pdev)
{
}

static const struct pci_device_id stub_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },	/* ivshmem */
	{ }
};

static struct pci_driver stub_driver = {
	.name = "nvidia",
	.id_table = stub_ids,
	.probe = stub_probe,
	.remove = stub_remove,
};

static int __init stub_init(void)
{
	unsigned int domain, bus, slot, fn;
	int ret;

	if (!bdf || sscanf(bdf, "%x:%x:%x.%x", &domain, &bus, &slot, &fn) != 4)
		return -EINVAL;
	stub.pdev = pci_get_domain_bus_and_slot(domain, bus,
						PCI_DEVFN(slot, fn));
	if (!stub.pdev)
		return -ENODEV;
	stub.start = pci_resource_start(stub.pdev, bar);
	stub.len = pci_resource_len(stub.pdev, bar);
	stub.npages = stub.len / GPU_PAGE;
	stub.used = bitmap_zalloc(stub.npages, GFP_KERNEL);
	stub.va = ioremap_wc(stub.start, stub.len);
	if (!stub.used || !stub.va) {
		ret = -ENOMEM;
		goto err;
	}
	stub.next_va = VA_BASE;
	mutex_init(&stub.lock);
	INIT_LIST_HEAD(&stub.allocs);
	INIT_LIST_HEAD(&stub.freed);
	INIT_LIST_HEAD(&stub.regs);
	ret = pci_register_driver(&stub_driver);
	if (ret)
		goto err;
	stub_debugfs_init();
	pr_info("nvstub: %lu GPU pages over %s BAR%d\n", stub.npages, bdf, bar);
	return 0;

err:
	bitmap_free(stub.used);
	if (stub.va)
		iounmap(stub.va);
	pci_dev_put(stub.pdev);
	return ret;
}

/* phxfs.ko holds no pin any more: it is unloaded first. */
static void __exit stub_exit(void)
{
	struct stub_alloc *a, *tmp;

	stub_debugfs_exit();
	pci_unregister_driver(&stub_driver);
	WARN_ON(!list_empty(&stub.regs) || !list_empty(&stub.freed));
	list_for_each_entry_safe(a, tmp, &stub.allocs, node)
		stub_alloc_destroy(a);
	bitmap_free(stub.used);
	iounmap(stub.va);
	pci_dev_put(stub.pdev);
}

module_init(stub_init);
module_exit(stub_exit);
MODULE_DESCRIPTION("phxfs VM suite: a stand-in for NVIDIA's p2p interface");
#ifdef NVSTUB_PROPRIETARY
MODULE_LICENSE("NVIDIA");
#else
MODULE_LICENSE("GPL");
#endif
