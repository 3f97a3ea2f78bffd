// SPDX-License-Identifier: GPL-2.0
/*
 * A stand-in for the NVIDIA driver's peer-to-peer interface, for phxfs's VM
 * suite only (never installed): it exports nvidia_p2p_get_pages() and its
 * companions over an ivshmem BAR, so that phxfs.ko's real nvidia provider
 * runs in QEMU. "GPU memory" is handed out in 64 KiB pages at made-up GPU
 * virtual addresses, with neighbouring pages swapped in the BAR so that only
 * a provider that reads the page table finds the right bytes.
 *
 * debugfs, /sys/kernel/debug/nvstub/:
 *   alloc  write a byte count; read back "VA" of the last allocation
 *   free   write a VA: frees it like cudaFree, calling free callbacks first
 *   pages  read: one "VA BAR_OFFSET" line per 64 KiB page allocated
 *   bar    read and write the BAR at file offset = BAR offset (what a GPU's
 *          copy engine would do; the fake CUDA driver's memcpy uses it)
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

struct stub_alloc {
	struct list_head node;
	u64 va;
	unsigned long npages;
	unsigned long *page;		/* BAR page index of each GPU page */
};

struct stub_reg {
	struct list_head node;
	struct stub_alloc *alloc;	/* NULL once freed under the pin */
	struct nvidia_p2p_page_table table;
	struct nvidia_p2p_page *pages;
	void (*callback)(void *data);
	void *data;
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
	struct mutex lock;
	struct list_head allocs;
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

static int stub_alloc(u64 bytes)
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

static void stub_reg_free(struct stub_reg *r)
{
	list_del(&r->node);
	kfree(r->table.pages);
	kfree(r->pages);
	kfree(r);
}

/* cudaFree: every pin of the memory gets its callback, then it is gone. */
static int stub_free(u64 va)
{
	struct stub_alloc *a = NULL, *it;
	struct stub_reg *r;
	unsigned long i;

	mutex_lock(&stub.lock);
	list_for_each_entry(it, &stub.allocs, node)
		if (it->va == va)
			a = it;
	if (!a) {
		mutex_unlock(&stub.lock);
		return -EINVAL;
	}
	list_del(&a->node);
	for (;;) {
		struct stub_reg *found = NULL;

		list_for_each_entry(r, &stub.regs, node)
			if (r->alloc == a)
				found = r;
		if (!found)
			break;
		found->alloc = NULL;
		/* As the real driver may, call back without our lock held. */
		mutex_unlock(&stub.lock);
		found->callback(found->data);
		mutex_lock(&stub.lock);
	}
	for (i = 0; i < a->npages; i++)
		clear_bit(a->page[i], stub.used);
	mutex_unlock(&stub.lock);
	kfree(a->page);
	kfree(a);
	return 0;
}

int nvidia_p2p_get_pages(u64 p2p_token, u32 va_space, u64 virtual_address,
			 u64 length, struct nvidia_p2p_page_table **page_table,
			 void (*free_callback)(void *data), void *data)
{
	unsigned long first, i, n = length / GPU_PAGE;
	struct stub_alloc *a;
	struct stub_reg *r;

	if (!IS_ALIGNED(virtual_address | length, GPU_PAGE) || !length ||
	    !free_callback)
		return -EINVAL;
	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	r->pages = kcalloc(n, sizeof(*r->pages), GFP_KERNEL);
	r->table.pages = kcalloc(n, sizeof(*r->table.pages), GFP_KERNEL);
	if (!r->pages || !r->table.pages) {
		kfree(r->pages);
		kfree(r->table.pages);
		kfree(r);
		return -ENOMEM;
	}
	mutex_lock(&stub.lock);
	a = stub_find(virtual_address, length);
	if (!a) {
		mutex_unlock(&stub.lock);
		kfree(r->pages);
		kfree(r->table.pages);
		kfree(r);
		return -EINVAL;
	}
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
	r->callback = free_callback;
	r->data = data;
	list_add_tail(&r->node, &stub.regs);
	mutex_unlock(&stub.lock);
	*page_table = &r->table;
	return 0;
}
EXPORT_SYMBOL(nvidia_p2p_get_pages);

static struct stub_reg *stub_reg_of(struct nvidia_p2p_page_table *t)
{
	struct stub_reg *r;

	list_for_each_entry(r, &stub.regs, node)
		if (&r->table == t)
			return r;
	return NULL;
}

int nvidia_p2p_put_pages(u64 p2p_token, u32 va_space, u64 virtual_address,
			 struct nvidia_p2p_page_table *page_table)
{
	struct stub_reg *r;

	mutex_lock(&stub.lock);
	r = stub_reg_of(page_table);
	if (r)
		stub_reg_free(r);
	mutex_unlock(&stub.lock);
	return r ? 0 : -EINVAL;
}
EXPORT_SYMBOL(nvidia_p2p_put_pages);

int nvidia_p2p_free_page_table(struct nvidia_p2p_page_table *page_table)
{
	return nvidia_p2p_put_pages(0, 0, 0, page_table);
}
EXPORT_SYMBOL(nvidia_p2p_free_page_table);

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

static int __init stub_init(void)
{
	unsigned int domain, bus, slot, fn;

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
		bitmap_free(stub.used);
		if (stub.va)
			iounmap(stub.va);
		pci_dev_put(stub.pdev);
		return -ENOMEM;
	}
	stub.next_va = VA_BASE;
	mutex_init(&stub.lock);
	INIT_LIST_HEAD(&stub.allocs);
	INIT_LIST_HEAD(&stub.regs);
	stub.dir = debugfs_create_dir("nvstub", NULL);
	debugfs_create_file("alloc", 0600, stub.dir, NULL, &alloc_fops);
	debugfs_create_file("free", 0200, stub.dir, NULL, &free_fops);
	debugfs_create_file("pages", 0400, stub.dir, NULL, &pages_fops);
	debugfs_create_file("bar", 0600, stub.dir, NULL, &bar_fops);
	pr_info("nvstub: %lu GPU pages over %s BAR%d\n", stub.npages, bdf, bar);
	return 0;
}

static void __exit stub_exit(void)
{
	struct stub_alloc *a, *tmp;

	debugfs_remove_recursive(stub.dir);
	list_for_each_entry_safe(a, tmp, &stub.allocs, node)
		stub_free(a->va);
	bitmap_free(stub.used);
	iounmap(stub.va);
	pci_dev_put(stub.pdev);
}

module_init(stub_init);
module_exit(stub_exit);
MODULE_DESCRIPTION("phxfs VM suite: a stand-in for NVIDIA's p2p interface");
MODULE_LICENSE("GPL");
