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
 * BAR is plain memory.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/pci.h>

#include "phxfs.h"

static char *pcibar[PHXFS_MAX_DEVICES];
static int npcibar;
module_param_array(pcibar, charp, &npcibar, 0444);
MODULE_PARM_DESC(pcibar,
		 "BARs to serve as device memory: DOMAIN:BUS:DEV.FN@BAR,...");

static int pcibar_pin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
	u64 end;

	/* A BAR stays put while phxfs holds it: nothing to hold per range. */
	if (check_add_overflow(pin->dev_addr, pin->len, &end) ||
	    end > dev->bar_size)
		return -EINVAL;
	return 0;
}

static struct page *pcibar_page(struct phxfs_dev *dev, struct phxfs_pin *pin,
				unsigned long i)
{
	return phxfs_bar_page(dev, pin->dev_addr + ((u64)i << PAGE_SHIFT));
}

static void pcibar_unpin(struct phxfs_dev *dev, struct phxfs_pin *pin)
{
}

static void pcibar_release(struct phxfs_dev *dev)
{
	pci_release_region(dev->pdev, dev->bar);
	pci_disable_device(dev->pdev);
	pci_dev_put(dev->pdev);
}

static int pcibar_probe(void);

const struct phxfs_provider_ops phxfs_pcibar_ops = {
	.id = PHXFS_PROVIDER_PCIBAR,
	.name = "pcibar",
	.probe = pcibar_probe,
	.pin = pcibar_pin,
	.page = pcibar_page,
	.unpin = pcibar_unpin,
	.release = pcibar_release,
};

static int pcibar_add(const char *spec)
{
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
	ret = pci_enable_device_mem(pdev);
	if (ret)
		goto err_put;
	ret = pci_request_region(pdev, bar, "phxfs");
	if (ret) {
		pci_err(pdev, "phxfs: BAR%d is in use by another driver\n",
			bar);
		goto err_disable;
	}
	/* On failure phxfs_dev_add() has called pcibar_release(). */
	return phxfs_dev_add(pdev, bar, PAGE_SIZE, &phxfs_pcibar_ops, NULL);

err_disable:
	pci_disable_device(pdev);
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
