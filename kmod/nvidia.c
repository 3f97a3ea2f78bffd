// SPDX-License-Identifier: GPL-2.0
/*
 * The nvidia provider: cudaMalloc'ed GPU memory, addressed by its CUDA
 * virtual address, through the NVIDIA driver's nvidia_p2p_get_pages().
 *
 * Each NVIDIA GPU gets struct pages over BAR1, the window through which
 * the driver exposes GPU memory to peers. MAP asks the driver to pin a range
 * of GPU virtual memory; the driver answers with the BAR1 addresses of its
 * 64 KiB GPU pages, each of which is 16 of our 4 KiB pages. The driver's
 * symbols are resolved at load time (weak references, nv-p2p-abi.h), so
 * phxfs.ko loads and serves other providers where no NVIDIA driver is
 * present; load it after the driver (packages/phxfs.conf has the softdep).
 *
 * The driver calls nv_free_callback() when the memory is freed while
 * pinned (cudaFree, process exit); phxfs_pin_revoke() then removes the
 * pages from user space and waits for I/O on them before we return.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/pci.h>
#include <linux/slab.h>

#include "nv-p2p-abi.h"
#include "phxfs.h"

#define NV_GPU_PAGE_SIZE	(64UL << 10)
#define NV_SUBPAGES		(NV_GPU_PAGE_SIZE / PAGE_SIZE)
#define NV_BAR1			1

static char *nvidia_extra[PHXFS_MAX_DEVICES];
static int nnvidia_extra;
module_param_array(nvidia_extra, charp, &nnvidia_extra, 0444);
MODULE_PARM_DESC(nvidia_extra,
		 "More devices for the nvidia provider, DOMAIN:BUS:DEV.FN@BAR (tests)");

/* What the provider found, for users and libphxfs's diagnostics. */
static char nv_status[128] = "not probed";
module_param_string(nvidia_status, nv_status, sizeof(nv_status), 0444);
MODULE_PARM_DESC(nvidia_status, "What the nvidia provider found (read only)");

struct nv_pin {
	struct phxfs_dev *dev;
	struct phxfs_pin *pin;
	struct nvidia_p2p_page_table *table;
};

static void nv_free_callback(void *data)
{
	struct nv_pin *np = data;

	if (phxfs_pin_revoke(np->dev, np->pin)) {
		nvidia_p2p_free_page_table(np->table);
		np->table = NULL;
	}
}

/* The driver's answer must be pages of our BAR, as many as we asked for. */
static int nv_check_table(struct phxfs_dev *dev, struct phxfs_pin *pin,
			  struct nvidia_p2p_page_table *t)
{
	u32 i;

	if (!NVIDIA_P2P_VERSION_COMPATIBLE(t, NVIDIA_P2P_PAGE_TABLE_VERSION)) {
		dev_err(dev->device, "NVIDIA page table version %x, need %x\n",
			t->version, NVIDIA_P2P_PAGE_TABLE_VERSION);
		return -EPROTO;
	}
	if (t->page_size != NVIDIA_P2P_PAGE_SIZE_64KB ||
	    t->entries != pin->len / NV_GPU_PAGE_SIZE)
		return -EINVAL;
	for (i = 0; i < t->entries; i++) {
		u64 pa = t->pages[i]->physical_address;

		if (pa < dev->bar_start || !IS_ALIGNED(pa, NV_GPU_PAGE_SIZE) ||
		    pa - dev->bar_start + NV_GPU_PAGE_SIZE > dev->bar_size) {
			dev_err(dev->device, "GPU page %llx is outside BAR1\n",
				pa);
			return -EINVAL;
		}
	}
	return 0;
}

static int nv_pin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	struct nv_pin *np;
	int ret;

	np = kzalloc(sizeof(*np), GFP_KERNEL);
	if (!np)
		return -ENOMEM;
	np->dev = dev;
	np->pin = pin;
	pin->priv = np;
	ret = nvidia_p2p_get_pages(0, 0, pin->dev_addr, pin->len, &np->table,
				   nv_free_callback, np);
	if (ret) {
		phxfs_dbg(dev, "nvidia_p2p_get_pages %llx+%llx: %d\n",
			  pin->dev_addr, pin->len, ret);
		goto err_free;
	}
	ret = nv_check_table(dev, pin, np->table);
	if (ret) {
		nvidia_p2p_put_pages(0, 0, pin->dev_addr, np->table);
		goto err_free;
	}
	return 0;

err_free:
	pin->priv = NULL;
	kfree(np);
	return ret;
}

static struct page *nv_page(struct phxfs_dev *dev, struct phxfs_pin *pin,
			    unsigned long i)
{
	struct nv_pin *np = pin->priv;
	u64 pa = np->table->pages[i / NV_SUBPAGES]->physical_address;

	return phxfs_bar_page(dev, pa - dev->bar_start +
			      (i % NV_SUBPAGES) * PAGE_SIZE);
}

static void nv_unpin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	struct nv_pin *np = pin->priv;
	int ret;

	ret = nvidia_p2p_put_pages(0, 0, pin->dev_addr, np->table);
	if (ret)
		dev_warn(dev->device, "nvidia_p2p_put_pages %llx: %d\n",
			 pin->dev_addr, ret);
	kfree(np);
}

/* Revoked before MAP saw the pin: the callback left the table to us. */
static void nv_drop(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	struct nv_pin *np = pin->priv;

	nvidia_p2p_free_page_table(np->table);
	kfree(np);
}

static void nv_release(struct phxfs_dev *dev)
{
	pci_dev_put(dev->pdev);
}

static int nv_add(struct pci_dev *pdev, int bar)
{
	int ret;

	pci_dev_get(pdev);
	/* On failure phxfs_dev_add() has called nv_release(). */
	ret = phxfs_dev_add(pdev, bar, NV_GPU_PAGE_SIZE, &phxfs_nvidia_ops,
			    NULL);
	if (ret)
		pci_err(pdev, "phxfs: not serving this GPU: %d\n", ret);
	return ret;
}

static int nv_add_extra(const char *spec)
{
	struct pci_dev *pdev;
	int bar, ret;

	pdev = phxfs_pci_spec("nvidia_extra", spec, &bar);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	ret = nv_add(pdev, bar);
	pci_dev_put(pdev);
	return ret;
}

static int nv_probe(void)
{
	struct pci_dev *pdev = NULL;
	int i, ret, n = 0;

	/* Weak references: NULL unless the driver was loaded before us. */
	if (!nvidia_p2p_get_pages || !nvidia_p2p_put_pages ||
	    !nvidia_p2p_free_page_table) {
		strscpy(nv_status,
			"unavailable: no NVIDIA driver was loaded when phxfs loaded",
			sizeof(nv_status));
		pr_info("phxfs: nvidia provider %s\n", nv_status);
		return 0;
	}
	/* GPUs in PCI order; a GPU the driver does not expose is skipped. */
	while ((pdev = pci_get_device(PCI_VENDOR_ID_NVIDIA, PCI_ANY_ID, pdev))) {
		if ((pdev->class >> 16) != PCI_BASE_CLASS_DISPLAY)
			continue;
		if (!nv_add(pdev, NV_BAR1))
			n++;
	}
	for (i = 0; i < nnvidia_extra; i++) {
		ret = nv_add_extra(nvidia_extra[i]);
		if (ret)
			return ret;
	}
	snprintf(nv_status, sizeof(nv_status), "%d GPUs, %d more devices", n,
		 nnvidia_extra);
	pr_info("phxfs: nvidia provider: %s\n", nv_status);
	return 0;
}

const struct phxfs_provider_ops phxfs_nvidia_ops = {
	.id = PHXFS_PROVIDER_NVIDIA,
	.name = "nvidia",
	.probe = nv_probe,
	.pin = nv_pin,
	.page = nv_page,
	.unpin = nv_unpin,
	.unpin_waits_for_io = true,
	.drop = nv_drop,
	.release = nv_release,
};
