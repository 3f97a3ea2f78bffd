// SPDX-License-Identifier: GPL-2.0
/*
 * phxfs.ko: struct pages for device memory, so that O_DIRECT I/O
 * moves data between storage and a device with no host copy.
 *
 * Providers find devices; this file runs them in a fixed order, which fixes
 * the numbering of /dev/phxfsN: pcibar devices first, in the order of the
 * pcibar parameter, then NVIDIA GPUs in PCI order, then nvidia_extra.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>

#include "phxfs.h"

int phxfs_debug;
module_param_named(debug, phxfs_debug, int, 0644);
MODULE_PARM_DESC(debug, "Log every mmap, MAP, UNMAP and ioctl error (0/1)");

static const struct phxfs_provider_ops *const phxfs_providers[] = {
	&phxfs_pcibar_ops,
	&phxfs_nvidia_ops,
};

static int __init phxfs_init(void)
{
	int i, ret;

	ret = phxfs_chrdev_init();
	if (ret)
		return ret;
	for (i = 0; i < ARRAY_SIZE(phxfs_providers); i++) {
		ret = phxfs_providers[i]->probe();
		if (ret) {
			pr_err("phxfs: %s provider failed: %d\n",
			       phxfs_providers[i]->name, ret);
			goto err;
		}
	}
	pr_info("phxfs: ABI version %d loaded\n", PHXFS_ABI_VERSION);
	return 0;

err:
	phxfs_dev_remove_all();
	phxfs_chrdev_exit();
	return ret;
}

static void __exit phxfs_exit(void)
{
	phxfs_dev_remove_all();
	phxfs_chrdev_exit();
	pr_info("phxfs: unloaded\n");
}

module_init(phxfs_init);
module_exit(phxfs_exit);

MODULE_DESCRIPTION("Phoenix: device memory pages for direct storage I/O");
MODULE_AUTHOR("The Phoenix authors");
/* memremap_pages() and friends are GPL-only. */
MODULE_LICENSE("GPL");
MODULE_VERSION("0.1.0");
