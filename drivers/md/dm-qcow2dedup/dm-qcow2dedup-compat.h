/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-qcow2dedup: what differs between the kernels the module is built for.
 *
 * In drivers/md this header would be empty: the code is written against the
 * current kernel's API.  Out of tree it also builds for older kernels, and
 * each difference is bridged here, once, by kernel version, so that no other
 * file needs an #if.  Tested: Debian 12's 6.1 and 6.12 kernels (see
 * Documentation/admin-guide/device-mapper/qcow2dedup.rst).
 */
#ifndef DM_QCOW2DEDUP_COMPAT_H
#define DM_QCOW2DEDUP_COMPAT_H

#include <linux/bio.h>
#include <linux/version.h>

/* 6.12 moved the unaligned access helpers out of asm/. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

/*
 * 6.5 replaced fmode_t with blk_mode_t in the block device open modes that
 * dm_table_get_mode() returns; FMODE_WRITE is the same bit.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 5, 0)
#define BLK_OPEN_WRITE FMODE_WRITE
#endif

/* bio_list_merge_init() arrived in 6.10: merge @bl2 into @bl, empty @bl2. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 10, 0)
static inline void bio_list_merge_init(struct bio_list *bl,
				       struct bio_list *bl2)
{
	bio_list_merge(bl, bl2);
	bio_list_init(bl2);
}
#endif

#endif /* DM_QCOW2DEDUP_COMPAT_H */
