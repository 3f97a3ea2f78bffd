// SPDX-License-Identifier: GPL-2.0
/*
 * The nvidia provider: cudaMalloc'ed GPU memory, addressed by its CUDA
 * virtual address, through the NVIDIA driver's persistent P2P pages.
 *
 * Each NVIDIA GPU bound to the nvidia driver gets struct pages over BAR1,
 * the window through which the driver exposes GPU memory to peers. MAP asks
 * the driver to pin a range of GPU virtual memory of the calling process;
 * the driver answers with the BAR1 addresses of its 64 KiB GPU pages, each
 * of which is 16 of our 4 KiB pages.
 *
 * Persistent pins, not nvidia_p2p_get_pages() with a free callback: with a
 * callback, cudaFree takes the memory back when the callback returns, and
 * the callback cannot wait for pages that anyone may keep referenced for as
 * long as they like (vmsplice, io_uring). A persistent pin keeps the memory
 * allocated, whatever the process does, until we put it, which pin.c does
 * only once no page is referenced. cudaFree of mapped memory therefore
 * leaves the mapping working until UNMAP, munmap or exit. Drivers refuse
 * persistent pins on MIG-enabled GPUs and vGPU: MAP then fails with
 * EOPNOTSUPP and libphxfs uses its copy path.
 *
 * The driver's symbols are resolved at load time (weak references,
 * nv-p2p-abi.h), so phxfs.ko loads and serves other providers where no
 * usable NVIDIA driver is present; load it after the driver
 * (packages/phxfs.conf has the softdep). Only NVIDIA's open kernel modules
 * can be used: the loader refuses a proprietary module's symbols to a module
 * that has already linked GPL-only ones, and leaves our weak references
 * NULL. That needs a GPL-only symbol before the first nvidia_p2p_* one in
 * our symbol table, which holds (dev_set_name and friends come first) and
 * which the VM suite checks with a stand-in under NVIDIA's license.
 */
#include <linux/device.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/pci.h>

#include "nv-p2p-abi.h"
#include "phxfs.h"

#define NV_GPU_PAGE_SIZE	(64UL << 10)
#define NV_SUBPAGES		(NV_GPU_PAGE_SIZE / PAGE_SIZE)
#define NV_BAR1			1
#define NV_DRIVER		"nvidia"

static char *nvidia_extra[PHXFS_MAX_DEVICES];
static int nnvidia_extra;
module_param_array(nvidia_extra, charp, &nnvidia_extra, 0444);
MODULE_PARM_DESC(nvidia_extra,
		 "More devices bound to the nvidia driver, DOMAIN:BUS:DEV.FN@BAR (tests)");

/* What the provider found, for users and libphxfs's diagnostics. */
static char nv_status[192] = "not probed";
module_param_string(nvidia_status, nv_status, sizeof(nv_status), 0444);
MODULE_PARM_DESC(nvidia_status, "What the nvidia provider found (read only)");

/* The driver's answer must be pages of our BAR, as many as we asked for. */
static int nv_check_table(struct phxfs_dev *dev, struct phxfs_pin *pin,
			  struct nvidia_p2p_page_table *t)
{
	u32 i;

	if (!NVIDIA_P2P_VERSION_COMPATIBLE(t, NVIDIA_P2P_PAGE_TABLE_VERSION)) {
		dev_err(&dev->device, "NVIDIA page table version %x, need %x\n",
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
			dev_err(&dev->device, "GPU page %llx is outside BAR1\n",
				pa);
			return -EINVAL;
		}
	}
	return 0;
}

static int nv_pin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	struct nvidia_p2p_page_table *table;
	int ret;

	ret = nvidia_p2p_get_pages_persistent(pin->dev_addr, pin->len, &table,
					      0);
	if (ret == -ENOTSUPP || ret == -EOPNOTSUPP) {
		dev_warn_once(&dev->device,
			      "driver refuses persistent P2P pages (MIG, vGPU?): no direct path\n");
		return -EOPNOTSUPP;
	}
	if (ret) {
		phxfs_dbg(dev, "nvidia_p2p_get_pages_persistent %llx+%llx: %d\n",
			  pin->dev_addr, pin->len, ret);
		return ret;
	}
	ret = nv_check_table(dev, pin, table);
	if (ret) {
		nvidia_p2p_put_pages_persistent(pin->dev_addr, table, 0);
		return ret;
	}
	pin->priv = table;
	return 0;
}

static struct page *nv_page(struct phxfs_dev *dev, struct phxfs_pin *pin,
			    unsigned long i)
{
	struct nvidia_p2p_page_table *table = pin->priv;
	u64 pa = table->pages[i / NV_SUBPAGES]->physical_address;

	return phxfs_bar_page(dev, pa - dev->bar_start +
			      (i % NV_SUBPAGES) * PAGE_SIZE);
}

static void nv_unpin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	int ret;

	ret = nvidia_p2p_put_pages_persistent(pin->dev_addr, pin->priv, 0);
	if (ret)
		dev_warn(&dev->device, "nvidia_p2p_put_pages_persistent %llx: %d\n",
			 pin->dev_addr, ret);
}

static void nv_release(struct pci_dev *pdev, int bar, void *priv)
{
	pci_dev_put(pdev);
}

static bool nv_bound(struct pci_dev *pdev)
{
	return pdev->dev.driver && !strcmp(pdev->dev.driver->name, NV_DRIVER);
}

/* Takes a reference on pdev for the device, dropped by nv_release(). */
static int nv_add(struct pci_dev *pdev, int bar)
{
	int ret;

	if (!nv_bound(pdev)) {
		pci_info(pdev, "phxfs: bound to %s, not %s: not serving it\n",
			 dev_driver_string(&pdev->dev), NV_DRIVER);
		return -ENODEV;
	}
	pci_dev_get(pdev);
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

#define NV_UNLINKED							\
	"unavailable: the NVIDIA driver is loaded but its nvidia_p2p_*_persistent "	\
	"symbols could not be linked: install NVIDIA's open kernel modules (nvidia-open)"

/* Why the driver's symbols are missing: no driver, or one we cannot use. */
static void nv_explain_missing(void)
{
	if (driver_find(NV_DRIVER, &pci_bus_type))
		strscpy(nv_status, NV_UNLINKED, sizeof(nv_status));
	else
		strscpy(nv_status,
			"unavailable: no NVIDIA driver was loaded when phxfs loaded",
			sizeof(nv_status));
}

static int nv_probe(void)
{
	struct pci_dev *pdev = NULL;
	int i, ret, n = 0;

	/* Weak references: NULL unless a usable driver loaded before us. */
	if (!nvidia_p2p_get_pages_persistent ||
	    !nvidia_p2p_put_pages_persistent) {
		nv_explain_missing();
		pr_info("phxfs: nvidia provider %s\n", nv_status);
		return 0;
	}
	/* GPUs in PCI order; one the driver does not hold is skipped. */
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
	.release = nv_release,
};
