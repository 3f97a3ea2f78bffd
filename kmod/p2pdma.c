// SPDX-License-Identifier: GPL-2.0
/*
 * A BAR's pages from the kernel's own P2PDMA code, where the kernel has it
 * (CONFIG_PCI_P2PDMA; Debian's 6.1 and 6.12 do not).
 *
 * MEMORY_DEVICE_PCI_P2PDMA pages are what upstream gives device memory that
 * other devices DMA to: GUP hands them only to callers that ask with
 * FOLL_PCI_P2PDMA (the block layer, for queues that can DMA peer to peer),
 * so vmsplice, io_uring buffer registration, RDMA and sockets cannot pin
 * them at all; and mapping them for DMA runs the P2P distance check and
 * uses the bus address. The pcibar provider takes them when it can.
 *
 * The pages belong to a pool (pci_p2pdma_add_resource()) that hands out
 * allocations of its own choosing; a page freed back must have come from it.
 * So the whole BAR is taken from the pool in one allocation at load and
 * kept until unload: user MAPs then choose pages by offset, as with
 * MEMORY_DEVICE_GENERIC pages, and our allocation holds every page's base
 * reference, so page lifetime stays pin.c's business (a page goes back
 * only at unload, when nothing references it).
 *
 * The pool is devres of the PCI device, which the kernel keeps until that
 * device goes: a later load finds it and takes the BAR again. A driver bound
 * to the device and unbound while we hold the BAR waits in its unbind for
 * our unload (the pool's pages are referenced); nothing is freed under us.
 *
 * The nvidia provider keeps MEMORY_DEVICE_GENERIC pages: P2PDMA pages must
 * be registered on the device that owns the BAR, as devres of its driver's
 * binding, and the GPU belongs to nvidia.ko; a registration of ours on it
 * would live and die with a driver we do not control.
 */
#include <linux/pci-p2pdma.h>

#include "phxfs.h"

#if IS_ENABLED(CONFIG_PCI_P2PDMA)

int phxfs_p2p_pages(struct phxfs_dev *dev)
{
	void *kaddr;
	int ret;

	/* A pool from an earlier load of ours is there still. */
	kaddr = pci_alloc_p2pmem(dev->pdev, dev->bar_size);
	if (!kaddr) {
		ret = pci_p2pdma_add_resource(dev->pdev, dev->bar, dev->bar_size, 0);
		if (ret)
			return ret;
		kaddr = pci_alloc_p2pmem(dev->pdev, dev->bar_size);
		if (!kaddr)
			return -EBUSY; /* someone else holds part of the pool */
	}
	if (virt_to_phys(kaddr) != dev->bar_start) {
		pci_free_p2pmem(dev->pdev, kaddr, dev->bar_size);
		return -EBUSY;
	}
	dev->p2p_kaddr = kaddr;
	return 0;
}

void phxfs_p2p_unpages(struct phxfs_dev *dev)
{
	pci_free_p2pmem(dev->pdev, dev->p2p_kaddr, dev->bar_size);
	dev->p2p_kaddr = NULL;
}

#else

int phxfs_p2p_pages(struct phxfs_dev *dev)
{
	return -EOPNOTSUPP;
}

void phxfs_p2p_unpages(struct phxfs_dev *dev)
{
}

#endif
