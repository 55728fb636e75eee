/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The deduplication index of one target: content digest -> host cluster,
 * with what is needed to keep the qcow2 COPIED flags exact.
 *
 * An entry describes one host cluster the target wrote.  It is in two
 * structures: an rbtree ordered by digest (lookups on write) and an xarray
 * by host cluster index (the referrer bookkeeping when a guest cluster
 * stops pointing there, and map()'s "is this cluster indexed" test).
 *
 * States.  An entry is WRITING from the allocation of its cluster until the
 * data write completes: it is then the per-digest lock of dm-vdo's design;
 * a second write of the same content parks on it (with the writer the
 * entry names, which the index does not look into) and becomes a hit when
 * the first completes.  It is READY afterwards.  An UNKEYED entry is in the
 * xarray only: a cluster read from the dedup table whose referrers are
 * being counted, or one the rebuild is hashing.  It keeps map() away from
 * the cluster like any entry, and becomes READY with dedup_key().
 *
 * Persistence (dedup-table.c).  DEDUP_F_PERSISTED says the on-disk table's slot
 * for the cluster holds the entry's key.  Entries READY and not persisted
 * carry DEDUP_MARK_DIRTY in the xarray: the next table flush writes them.
 * When a persisted slot stops describing its cluster (the entry is removed
 * or re-keyed), the entry carries DEDUP_MARK_CLEAR until the table zeroes
 * the slot on disk, which it must do before the cluster is freed (the next
 * commit) or written in place (at once, a "barrier").  A removed entry
 * whose slot still has to go stays in the xarray as DEAD: no lookup by
 * digest or host finds it, but it keeps map() away from its cluster, and
 * recording the clear needs no memory.  Slots without an entry (dropped
 * when the table was loaded) are kept in @clears.
 *
 * Loaded entries are hints (DEDUP_F_UNVERIFIED): a table in the image is untrusted
 * input, so the cluster is compared byte for byte before it is first shared.
 *
 * Referrers.  A READY entry lists the guest clusters of the active L1 that
 * point to it; its qcow2 refcount equals their number (the target shares
 * only clusters it wrote during this activation, which no snapshot can
 * reach).  One referrer is held inline; more in an array.  The index tells
 * its caller when a cluster goes from one referrer to two (clear COPIED on
 * the first) and from two to one (set COPIED on the survivor), and removes
 * the entry when the last referrer goes.
 *
 * Memory.  Entries and referrer arrays are allocated with the caller's gfp
 * flags (dedup_insert_writing(): GFP_NOIO without retries, on the I/O
 * path); a failed allocation leaves the index as it was.  Recording a slot
 * to zero needs no memory (marks and DEAD entries), but for the slots the
 * load drops (dedup_record_clear(), at construction).
 *
 * Locking: every function belongs to the target's worker, except
 * dedup_host_indexed() (any context, RCU) and the statistics readers.
 */
#ifndef DM_QCOW2DEDUP_DEDUP_INDEX_H
#define DM_QCOW2DEDUP_DEDUP_INDEX_H

#include <linux/bits.h>
#include <linux/rbtree.h>
#include <linux/types.h>
#include <linux/xarray.h>

/*
 * Digest bytes kept per entry, and in the table's slots (its key_len):
 * 192 bits, longer digests are truncated.  A collision of a 192-bit cut
 * of sha256 or blake2b takes about 2^96 work; the target already accepts
 * 128-bit digests without verify.  It keeps the entry at 64 bytes.
 */
#define DEDUP_KEY_MAX	24

/* Buckets of change stamps (see dedup_index.host_changes): 4 KiB. */
#define DEDUP_STAMP_BITS	10
#define DEDUP_STAMP_BUCKETS	BIT(DEDUP_STAMP_BITS)

enum dedup_state {
	DEDUP_WRITING,
	DEDUP_READY,
	DEDUP_UNKEYED,
	DEDUP_DEAD,		/* removed; waits for its slot to be zeroed */
};

/* In dedup_index.by_host: READY, not yet in the on-disk table. */
#define DEDUP_MARK_DIRTY	XA_MARK_1
/* In dedup_index.by_host: the on-disk slot must be zeroed. */
#define DEDUP_MARK_CLEAR	XA_MARK_2

/*
 * dedup_entry.host_flags: the host cluster index in the low 56 bits (qcow2
 * host offsets have 56 bits), the state and flags above it.  One word, not
 * bit-fields: GCC computes with a 56-bit field in a 56-bit type, and
 * "e->host << cluster_bits" would lose the high bits.
 */
#define DEDUP_HOST_BITS		56
#define DEDUP_HOST_MASK		(BIT_ULL(DEDUP_HOST_BITS) - 1)
#define DEDUP_STATE_SHIFT	56		/* 2 bits: enum dedup_state */
#define DEDUP_F_PERSISTED	BIT_ULL(58)	/* the on-disk slot holds @key */
#define DEDUP_F_UNVERIFIED	BIT_ULL(59)	/* loaded: compare before the first share */
#define DEDUP_F_COPIED_REF	BIT_ULL(60)	/* load, rebuild: a referrer has COPIED */
#define DEDUP_REFS_SHIFT	61		/* 2 bits: enum dedup_refs_kind */

/* Where an entry's referrers are. */
enum dedup_refs_kind {
	DEDUP_REFS_NONE,	/* none (WRITING, UNKEYED, DEAD) */
	DEDUP_REFS_ONE,		/* one: @guest */
	DEDUP_REFS_ARRAY,	/* two or more: @refs */
};

/* Two or more referrers.  Sized so that the allocation is a power of two. */
struct dedup_refs {
	u32 nr;
	u32 cap;
	u64 guest[];
};

/*
 * 64 bytes on 64-bit: the rbtree node, the key, one word for the host and
 * the flags, one for the referrer (or the referrer array, or the writer).
 */
struct dedup_entry {
	struct rb_node node;		/* in dedup_index.by_digest */
	u8 key[DEDUP_KEY_MAX];		/* digest, zero-padded */
	u64 host_flags;			/* see DEDUP_HOST_BITS */
	union {
		u64 guest;		/* DEDUP_REFS_ONE: the referrer */
		struct dedup_refs *refs; /* DEDUP_REFS_ARRAY */
		void *writer;		/* WRITING: the writer's, for its waiters */
	};
};

static inline u64 dedup_entry_host(const struct dedup_entry *e)
{
	return e->host_flags & DEDUP_HOST_MASK;
}

static inline enum dedup_state dedup_entry_state(const struct dedup_entry *e)
{
	return (e->host_flags >> DEDUP_STATE_SHIFT) & 3;
}

static inline bool dedup_entry_persisted(const struct dedup_entry *e)
{
	return e->host_flags & DEDUP_F_PERSISTED;
}

static inline bool dedup_entry_unverified(const struct dedup_entry *e)
{
	return e->host_flags & DEDUP_F_UNVERIFIED;
}

static inline bool dedup_entry_copied_ref(const struct dedup_entry *e)
{
	return e->host_flags & DEDUP_F_COPIED_REF;
}

static inline void dedup_entry_set_copied_ref(struct dedup_entry *e)
{
	e->host_flags |= DEDUP_F_COPIED_REF;
}

static inline enum dedup_refs_kind dedup_entry_refs_kind(const struct dedup_entry *e)
{
	return (e->host_flags >> DEDUP_REFS_SHIFT) & 3;
}

/* The number of guest clusters that point to the entry's cluster. */
static inline u32 dedup_nr_refs(const struct dedup_entry *e)
{
	switch (dedup_entry_refs_kind(e)) {
	case DEDUP_REFS_ONE:
		return 1;
	case DEDUP_REFS_ARRAY:
		return e->refs->nr;
	default:
		return 0;
	}
}

/* The writer given to dedup_insert_writing() or dedup_rekey_writing(). */
static inline void *dedup_entry_writer(const struct dedup_entry *e)
{
	return dedup_entry_state(e) == DEDUP_WRITING ? e->writer : NULL;
}

struct dedup_index {
	struct rb_root by_digest;
	struct xarray by_host;		/* host cluster index -> entry */
	struct xarray clears;		/* slots without an entry to zero (load) */
	unsigned int key_len;
	u64 limit_bytes;		/* 0: no limit */
	/*
	 * Change stamps (dedup_host_stamp()).  @host_changes[bucket of a
	 * host cluster] is bumped whenever an entry of a host in that bucket
	 * loses its key or its memory (removed, re-keyed, freed), @changes
	 * when the whole index is emptied: equal stamps of a host around a
	 * wait prove that an entry of that host found before it is the same
	 * entry, for the same bytes, after it.  Per bucket, so that changes
	 * to other clusters (1 in DEDUP_STAMP_BUCKETS of them share one) do
	 * not make a wait look stale.  Neither goes down (a u32 bucket
	 * wraps after 2^32 changes, which no read outlasts).
	 */
	u64 changes;
	u32 host_changes[DEDUP_STAMP_BUCKETS];

	/* Statistics: written by the worker, read anywhere (READ_ONCE). */
	u64 entries;
	u64 shared;			/* entries with nr_refs >= 2 */
	u64 extra_refs;			/* sum of (nr_refs - 1) */
	u64 array_bytes;		/* referrer arrays */
	u64 unkeyed;			/* UNKEYED entries (not in @entries) */
	u64 dirty;			/* entries marked DEDUP_MARK_DIRTY */
	u64 nr_clears;			/* slots to zero: marked entries and @clears */
	u64 dead;			/* DEAD entries */
	u64 persisted;			/* entries whose slot is on disk */
	u64 unverified;			/* entries with ->unverified set */
};

/* What removing a referrer did to its entry. */
enum dedup_drop {
	DEDUP_DROP_NONE,		/* the cluster is not indexed */
	DEDUP_DROP_SHARED,		/* still two or more referrers */
	DEDUP_DROP_UNIQUE,		/* two -> one: the survivor is ->guest */
	DEDUP_DROP_GONE,		/* last referrer: entry removed */
};

void dedup_index_init(struct dedup_index *idx, unsigned int key_len,
		      u64 limit_bytes);
void dedup_index_destroy(struct dedup_index *idx);
int dedup_cache_create(void);
void dedup_cache_destroy(void);

struct dedup_entry *dedup_find(struct dedup_index *idx, const u8 *key);
struct dedup_entry *dedup_find_host(struct dedup_index *idx, u64 host);
bool dedup_host_indexed(struct dedup_index *idx, u64 host);
bool dedup_host_clearing(struct dedup_index *idx, u64 host);

int dedup_insert_writing(struct dedup_index *idx, const u8 *key, u64 host,
			 void *writer, struct dedup_entry **entry);
void dedup_write_done(struct dedup_index *idx, struct dedup_entry *e,
		      u64 guest);
void dedup_remove(struct dedup_index *idx, struct dedup_entry *e);
int dedup_add_ref(struct dedup_index *idx, struct dedup_entry *e, u64 guest,
		  u64 *first, gfp_t gfp);
enum dedup_drop dedup_drop_ref(struct dedup_index *idx, u64 host, u64 guest);
int dedup_insert_unkeyed(struct dedup_index *idx, u64 host, const u8 *key,
			 struct dedup_entry **entry, gfp_t gfp);
int dedup_key(struct dedup_index *idx, struct dedup_entry *e, const u8 *digest);
unsigned long dedup_key_many(struct dedup_index *idx, struct dedup_entry **es,
			     unsigned long n);

/* dedup_sort_refs()'s item: an entry and its key's first 8 bytes, big-endian. */
struct dedup_sort_ref {
	u64 prefix;
	struct dedup_entry *e;
};

void dedup_sort_refs(struct dedup_sort_ref *a, struct dedup_sort_ref *tmp,
		     u32 *count, unsigned long n);
void dedup_set_persisted(struct dedup_index *idx, struct dedup_entry *e);
void dedup_set_unverified(struct dedup_index *idx, struct dedup_entry *e, bool v);
int dedup_record_clear(struct dedup_index *idx, u64 host, gfp_t gfp);
void dedup_forget_slot(struct dedup_index *idx, struct dedup_entry *e);
void dedup_clear_done(struct dedup_index *idx, struct dedup_entry *e);
int dedup_rekey_writing(struct dedup_index *idx, struct dedup_entry *e,
			const u8 *digest, void *writer);
int dedup_rekey(struct dedup_index *idx, struct dedup_entry *e, const u8 *digest);

void dedup_unverify_all(struct dedup_index *idx);
bool dedup_below_ceiling(u64 rc, u32 refcount_order);
bool dedup_is_zero(const void *buf, size_t len);
u64 dedup_host_stamp(const struct dedup_index *idx, u64 host);

/* Whether a digest match alone may share a cluster (else: verify first). */
enum dedup_hash_verdict {
	DEDUP_HASH_OK,
	DEDUP_HASH_SHORT,	/* under 128 bits: collisions by chance */
	DEDUP_HASH_BROKEN,	/* md4, md5, sha1: collisions on purpose */
};

enum dedup_hash_verdict dedup_hash_verdict(const char *alg, unsigned int digest_size,
					   bool verify);

u64 dedup_index_bytes(const struct dedup_index *idx);
size_t dedup_entry_bytes(void);

#endif /* DM_QCOW2DEDUP_DEDUP_INDEX_H */
