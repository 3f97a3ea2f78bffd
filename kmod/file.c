// SPDX-License-Identifier: GPL-2.0
/*
 * Open files of /dev/phxfsN.
 *
 * Each open file gets an inode of a private pseudo file system, and its
 * address space becomes the file's f_mapping: the file's VMAs, fork copies
 * included, hang off it, so unmap_mapping_pages() reaches all of them
 * without their owners' mmap locks, and never a VMA of another file.
 * Inside a file, each mmap takes a slot of file offsets (an IDA bounded by
 * PHXFS_MAX_MMAPS, given back at munmap), so offsets can neither overflow
 * nor collide however many mmaps come and go.
 *
 * The open file is also the owner of the ranges it maps: pcibar refuses a
 * range that another open file holds (pcibar.c).
 */
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/mount.h>
#include <linux/module.h>
#include <linux/pseudo_fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "phxfs.h"

#define PHXFS_FS_MAGIC 0x70687866	/* "phxf" */

static struct vfsmount *phxfs_mnt;
static int phxfs_mnt_count;
static atomic64_t phxfs_next_owner;

static int phxfs_fs_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, PHXFS_FS_MAGIC) ? 0 : -ENOMEM;
}

static struct file_system_type phxfs_fs_type = {
	.name = "phxfs",
	.owner = THIS_MODULE,
	.init_fs_context = phxfs_fs_init_fs_context,
	.kill_sb = kill_anon_super,
};

static int phxfs_open(struct inode *inode, struct file *filp)
{
	struct phxfs_dev *dev = container_of(inode->i_cdev, struct phxfs_dev,
					     cdev);
	struct phxfs_file *pf;
	int ret;

	pf = kzalloc(sizeof(*pf), GFP_KERNEL_ACCOUNT);
	if (!pf)
		return -ENOMEM;
	ret = simple_pin_fs(&phxfs_fs_type, &phxfs_mnt, &phxfs_mnt_count);
	if (ret)
		goto err_free;
	pf->inode = alloc_anon_inode(phxfs_mnt->mnt_sb);
	if (IS_ERR(pf->inode)) {
		ret = PTR_ERR(pf->inode);
		goto err_fs;
	}
	pf->dev = dev;
	pf->owner = atomic64_inc_return(&phxfs_next_owner);
	ida_init(&pf->slots);
	filp->f_mapping = pf->inode->i_mapping;
	filp->private_data = pf;
	return 0;

err_fs:
	simple_release_fs(&phxfs_mnt, &phxfs_mnt_count);
err_free:
	kfree(pf);
	return ret;
}

/* The last reference to the file: its VMAs, which hold it, are gone. */
static int phxfs_release(struct inode *inode, struct file *filp)
{
	struct phxfs_file *pf = filp->private_data;

	WARN_ON(atomic_read(&pf->nr_maps));
	ida_destroy(&pf->slots);
	iput(pf->inode);
	simple_release_fs(&phxfs_mnt, &phxfs_mnt_count);
	kfree(pf);
	return 0;
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
	info.flags = dev->p2p_kaddr ? PHXFS_INFO_P2PDMA : 0;
	info.pci_domain = pci_domain_nr(dev->pdev->bus);
	info.pci_bus = dev->pdev->bus->number;
	info.pci_devfn = dev->pdev->devfn;
	strscpy(info.name, dev->ops->name, sizeof(info.name));
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long phxfs_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct phxfs_file *pf = filp->private_data;
	void __user *uarg = (void __user *)arg;
	long ret;

	switch (cmd) {
	case PHXFS_IOCTL_INFO:
		ret = phxfs_ioctl_info(pf->dev, uarg);
		break;
	case PHXFS_IOCTL_MAP:
	case PHXFS_IOCTL_UNMAP:
		ret = phxfs_ioctl_map(filp, cmd, uarg);
		break;
	default:
		return -ENOTTY;
	}
	if (ret) {
		atomic64_inc(&pf->dev->stats.errors);
		phxfs_dbg(pf->dev, "ioctl %x: %ld\n", cmd, ret);
	}
	return ret;
}

const struct file_operations phxfs_fops = {
	.owner = THIS_MODULE,
	.open = phxfs_open,
	.release = phxfs_release,
	.mmap = phxfs_mmap,
	.unlocked_ioctl = phxfs_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};
