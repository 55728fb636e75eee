// SPDX-License-Identifier: GPL-2.0
/*
 * The deduplication index: see dedup-index.h.  No I/O here; the target's
 * worker turns what these functions report into qcow2 metadata changes.
 */
#include <kunit/visibility.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "dedup-index.h"
#include "qcow2-format.h"

static struct kmem_cache *entry_cache;

int dedup_cache_create(void)
{
	entry_cache = KMEM_CACHE(dedup_entry, 0);
	return entry_cache ? 0 : -ENOMEM;
}

void dedup_cache_destroy(void)
{
	kmem_cache_destroy(entry_cache);
}

/* Bytes one entry costs: the slab object and its share of the xarray. */
size_t dedup_entry_bytes(void)
{
	/* A full xa_node (576 bytes on 64-bit) maps 64 clusters. */
	return kmem_cache_size(entry_cache) + sizeof(struct xa_node) / XA_CHUNK_SIZE;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_entry_bytes);

u64 dedup_index_bytes(const struct dedup_index *idx)
{
	return (READ_ONCE(idx->entries) + READ_ONCE(idx->unkeyed) + READ_ONCE(idx->dead)) *
	       dedup_entry_bytes() + READ_ONCE(idx->array_bytes);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_index_bytes);

void dedup_index_init(struct dedup_index *idx, unsigned int key_len,
		      u64 limit_bytes)
{
	memset(idx, 0, sizeof(*idx));
	idx->by_digest = RB_ROOT;
	xa_init(&idx->by_host);
	xa_init(&idx->clears);
	idx->key_len = min_t(unsigned int, key_len, DEDUP_KEY_MAX);
	idx->limit_bytes = limit_bytes;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_index_init);

static void free_entry(struct dedup_index *idx, struct dedup_entry *e)
{
	if (e->cap) {
		idx->array_bytes -= e->cap * sizeof(u64);
		kfree(e->guests);
	}
	kmem_cache_free(entry_cache, e);
}

void dedup_index_destroy(struct dedup_index *idx)
{
	struct dedup_entry *e;
	unsigned long i;

	xa_for_each(&idx->by_host, i, e)
		free_entry(idx, e);
	xa_destroy(&idx->by_host);
	xa_destroy(&idx->clears);
	idx->by_digest = RB_ROOT;
	idx->entries = 0;
	idx->unkeyed = 0;
	idx->dead = 0;
	idx->shared = 0;
	idx->extra_refs = 0;
	idx->array_bytes = 0;
	idx->dirty = 0;
	idx->nr_clears = 0;
	idx->persisted = 0;
	idx->unverified = 0;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_index_destroy);

static int key_cmp(const void *key, const struct rb_node *n)
{
	return memcmp(key, rb_entry(n, struct dedup_entry, node)->key,
		      DEDUP_KEY_MAX);
}

static int entry_cmp(struct rb_node *a, const struct rb_node *b)
{
	return memcmp(rb_entry(a, struct dedup_entry, node)->key,
		      rb_entry(b, struct dedup_entry, node)->key, DEDUP_KEY_MAX);
}

/* Keys are compared over DEDUP_KEY_MAX bytes: pad a short digest. */
static void make_key(const struct dedup_index *idx, const u8 *digest, u8 *key)
{
	memset(key, 0, DEDUP_KEY_MAX);
	memcpy(key, digest, idx->key_len);
}

static void mark_dirty(struct dedup_index *idx, struct dedup_entry *e)
{
	if (!xa_get_mark(&idx->by_host, e->host, DEDUP_MARK_DIRTY)) {
		xa_set_mark(&idx->by_host, e->host, DEDUP_MARK_DIRTY);
		WRITE_ONCE(idx->dirty, idx->dirty + 1);
	}
}

static void unmark_dirty(struct dedup_index *idx, struct dedup_entry *e)
{
	if (xa_get_mark(&idx->by_host, e->host, DEDUP_MARK_DIRTY)) {
		xa_clear_mark(&idx->by_host, e->host, DEDUP_MARK_DIRTY);
		WRITE_ONCE(idx->dirty, idx->dirty - 1);
	}
}

/**
 * dedup_find() - the entry for a digest.
 * @idx: index.
 * @digest: the digest (at least key_len bytes).
 * Return: the entry, WRITING or READY, or NULL.
 */
struct dedup_entry *dedup_find(struct dedup_index *idx, const u8 *digest)
{
	u8 key[DEDUP_KEY_MAX];
	struct rb_node *n;

	make_key(idx, digest, key);
	n = rb_find(key, &idx->by_digest, key_cmp);
	return n ? rb_entry(n, struct dedup_entry, node) : NULL;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_find);

/**
 * dedup_find_host() - the live entry of host cluster @host.
 * @idx: index.
 * @host: host cluster index.
 * Return: the entry (WRITING, READY or UNKEYED), or NULL (none, or DEAD).
 */
struct dedup_entry *dedup_find_host(struct dedup_index *idx, u64 host)
{
	struct dedup_entry *e = xa_load(&idx->by_host, host);

	return e && e->state != DEDUP_DEAD ? e : NULL;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_find_host);

/**
 * dedup_host_indexed() - is host cluster @host in the index?
 * @idx: index.
 * @host: host cluster index.
 *
 * map() uses this to keep in-place writes away from indexed clusters, whose
 * contents must stay what their digest says.  An entry is inserted before
 * any L2 entry points to its cluster, and removed by the worker only.
 * Context: any (RCU inside xa_load()).
 */
bool dedup_host_indexed(struct dedup_index *idx, u64 host)
{
	return xa_load(&idx->by_host, host);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_host_indexed);

/**
 * dedup_host_clearing() - must the on-disk slot of host cluster @host be
 *	zeroed before the cluster changes?
 * @idx: index.
 * @host: host cluster index.
 */
bool dedup_host_clearing(struct dedup_index *idx, u64 host)
{
	return xa_get_mark(&idx->by_host, host, DEDUP_MARK_CLEAR) ||
	       xa_load(&idx->clears, host);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_host_clearing);

/*
 * A new entry for host cluster @host, in the xarray only; its key and
 * rbtree node are the caller's to set.  Return: 0, -ENOSPC at the memory
 * limit, -EEXIST when @host is indexed, or -ENOMEM.
 */
static bool over_limit(struct dedup_index *idx, u64 more)
{
	return idx->limit_bytes && dedup_index_bytes(idx) + more > idx->limit_bytes;
}

/*
 * New entries may fill three quarters of the limit.  The last quarter is
 * for referrer arrays: without it, an index that reached its limit with
 * new contents could not give any indexed cluster a second referrer (4
 * slots, 32 bytes), and nothing would be shared any more.
 */
static bool over_entry_limit(struct dedup_index *idx, u64 more)
{
	return idx->limit_bytes &&
	       dedup_index_bytes(idx) + more > idx->limit_bytes - idx->limit_bytes / 4;
}

static int new_entry(struct dedup_index *idx, u64 host, enum dedup_state state,
		     struct dedup_entry **entry, gfp_t gfp)
{
	struct dedup_entry *e;
	int r;

	if (over_entry_limit(idx, dedup_entry_bytes()))
		return -ENOSPC;
	e = kmem_cache_zalloc(entry_cache, gfp);
	if (!e)
		return -ENOMEM;
	e->host = host;
	e->state = state;
	INIT_LIST_HEAD(&e->waiters);
	r = xa_insert(&idx->by_host, host, e, gfp);
	if (r) {
		kmem_cache_free(entry_cache, e);
		return r == -EBUSY ? -EEXIST : r;
	}
	*entry = e;
	return 0;
}

/**
 * dedup_insert_writing() - index a cluster whose data write is starting.
 * @idx: index.
 * @digest: the content's digest; no entry has it.
 * @host: the newly allocated host cluster.
 * @entry: the new entry, in state WRITING, with no referrer.
 *
 * Return: 0; -ENOSPC when the index is at its memory limit, -ENOMEM when
 * memory is short (the caller writes the cluster unindexed); -EEXIST.
 */
int dedup_insert_writing(struct dedup_index *idx, const u8 *digest, u64 host,
			 struct dedup_entry **entry)
{
	struct dedup_entry *e;
	int r;

	r = new_entry(idx, host, DEDUP_WRITING, &e, GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN);
	if (r)
		return r;
	make_key(idx, digest, e->key);
	if (rb_find_add(&e->node, &idx->by_digest, entry_cmp)) {
		/* The caller looked the digest up first: a bug, not data. */
		xa_erase(&idx->by_host, host);
		kmem_cache_free(entry_cache, e);
		return -EEXIST;
	}
	WRITE_ONCE(idx->entries, idx->entries + 1);
	*entry = e;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_insert_writing);

/**
 * dedup_insert_unkeyed() - index a cluster whose digest is not trusted yet.
 * @idx: index.
 * @host: host cluster index, not indexed.
 * @key: its slot from the on-disk table (persisted), or NULL (the rebuild
 *	is about to hash it).
 * @entry: the new UNKEYED entry, without referrers.
 * @gfp: allocation flags.
 *
 * An entry read from the table is a hint: it is marked unverified, and its
 * cluster is compared with the data before it is first shared.
 * Return: 0, -ENOSPC at the memory limit, -EEXIST, or -ENOMEM.
 */
int dedup_insert_unkeyed(struct dedup_index *idx, u64 host, const u8 *key,
			 struct dedup_entry **entry, gfp_t gfp)
{
	struct dedup_entry *e;
	int r;

	r = new_entry(idx, host, DEDUP_UNKEYED, &e, gfp);
	if (r)
		return r;
	RB_CLEAR_NODE(&e->node);
	WRITE_ONCE(idx->unkeyed, idx->unkeyed + 1);
	if (key) {
		memcpy(e->key, key, DEDUP_KEY_MAX);
		e->persisted = true;
		WRITE_ONCE(idx->persisted, idx->persisted + 1);
		dedup_set_unverified(idx, e, true);
	}
	*entry = e;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_insert_unkeyed);

/**
 * dedup_key() - an UNKEYED entry with its referrers counted becomes READY.
 * @idx: index.
 * @e: the entry.
 * @digest: its digest, or NULL to keep the key read from the table.
 *
 * Return: 0, or -EEXIST when another entry has the digest (@e stays
 * UNKEYED; the caller removes it).
 */
int dedup_key(struct dedup_index *idx, struct dedup_entry *e, const u8 *digest)
{
	if (digest)
		make_key(idx, digest, e->key);
	if (rb_find_add(&e->node, &idx->by_digest, entry_cmp)) {
		RB_CLEAR_NODE(&e->node);
		return -EEXIST;
	}
	e->state = DEDUP_READY;
	WRITE_ONCE(idx->unkeyed, idx->unkeyed - 1);
	WRITE_ONCE(idx->entries, idx->entries + 1);
	if (!e->persisted)
		mark_dirty(idx, e);
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_key);

/**
 * dedup_write_done() - the data of a WRITING entry is on the device and
 *	guest cluster @guest is about to point to it.
 * @idx: index.
 * @e: the entry.
 * @guest: its first referrer.
 *
 * The caller moves @e->waiters back to its queue.
 */
void dedup_write_done(struct dedup_index *idx, struct dedup_entry *e, u64 guest)
{
	e->state = DEDUP_READY;
	e->guest = guest;
	e->nr_refs = 1;
	mark_dirty(idx, e);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_write_done);

/**
 * dedup_record_clear() - the on-disk slot of host cluster @host, which has
 *	no entry, must be zeroed (a slot the table load did not take).
 * @idx: index.
 * @host: host cluster index, not in @idx->by_host.
 * @gfp: allocation flags.
 *
 * Return: 0 or -ENOMEM.
 */
int dedup_record_clear(struct dedup_index *idx, u64 host, gfp_t gfp)
{
	int r;

	if (xa_load(&idx->clears, host))
		return 0;
	r = xa_err(xa_store(&idx->clears, host, xa_mk_value(1), gfp));
	if (!r)
		WRITE_ONCE(idx->nr_clears, idx->nr_clears + 1);
	return r;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_record_clear);

/**
 * dedup_forget_slot() - @e's on-disk slot will no longer describe its
 *	cluster: mark it to be zeroed (DEDUP_MARK_CLEAR).
 * @idx: index.
 * @e: the entry, which stays indexed.
 *
 * Needs no memory: the mark lives in @e's xarray slot.
 */
void dedup_forget_slot(struct dedup_index *idx, struct dedup_entry *e)
{
	unmark_dirty(idx, e);
	if (!e->persisted)
		return;
	e->persisted = false;
	WRITE_ONCE(idx->persisted, idx->persisted - 1);
	if (!xa_get_mark(&idx->by_host, e->host, DEDUP_MARK_CLEAR)) {
		xa_set_mark(&idx->by_host, e->host, DEDUP_MARK_CLEAR);
		WRITE_ONCE(idx->nr_clears, idx->nr_clears + 1);
	}
}
EXPORT_SYMBOL_IF_KUNIT(dedup_forget_slot);

/**
 * dedup_clear_done() - the table zeroed @e's slot (in its buffers): drop
 *	the mark; a DEAD entry goes for good.
 * @idx: index.
 * @e: an entry marked DEDUP_MARK_CLEAR.
 */
void dedup_clear_done(struct dedup_index *idx, struct dedup_entry *e)
{
	if (xa_get_mark(&idx->by_host, e->host, DEDUP_MARK_CLEAR)) {
		xa_clear_mark(&idx->by_host, e->host, DEDUP_MARK_CLEAR);
		WRITE_ONCE(idx->nr_clears, idx->nr_clears - 1);
	}
	if (e->state == DEDUP_DEAD) {
		xa_erase(&idx->by_host, e->host);
		WRITE_ONCE(idx->dead, idx->dead - 1);
		free_entry(idx, e);
	}
}
EXPORT_SYMBOL_IF_KUNIT(dedup_clear_done);

/**
 * dedup_set_persisted() - the table flush wrote @e's slot.
 * @idx: index.
 * @e: a READY entry.
 */
void dedup_set_persisted(struct dedup_index *idx, struct dedup_entry *e)
{
	unmark_dirty(idx, e);
	if (!e->persisted)
		WRITE_ONCE(idx->persisted, idx->persisted + 1);
	e->persisted = true;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_set_persisted);

/**
 * dedup_set_unverified() - must @e's cluster be compared byte for byte
 *	before it is shared?  (Entries loaded from the table, and every entry
 *	after a resume.)
 * @idx: index.
 * @e: the entry.
 * @v: the new state.
 */
void dedup_set_unverified(struct dedup_index *idx, struct dedup_entry *e, bool v)
{
	if (e->unverified != v)
		WRITE_ONCE(idx->unverified, v ? idx->unverified + 1 : idx->unverified - 1);
	e->unverified = v;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_set_unverified);

/**
 * dedup_remove() - take an entry out of the index and free it.
 * @idx: index.
 * @e: the entry; its waiters list must be empty (the caller requeued them).
 *
 * For a data write that failed, and for a cluster about to be overwritten
 * in place (its digest no longer describes it).  An entry whose slot must
 * still be zeroed on disk stays behind as DEAD until dedup_clear_done().
 */
void dedup_remove(struct dedup_index *idx, struct dedup_entry *e)
{
	if (e->state == DEDUP_DEAD)
		return;
	dedup_forget_slot(idx, e);
	dedup_set_unverified(idx, e, false);
	if (RB_EMPTY_NODE(&e->node)) {
		WRITE_ONCE(idx->unkeyed, idx->unkeyed - 1);
	} else {
		rb_erase(&e->node, &idx->by_digest);
		RB_CLEAR_NODE(&e->node);
		WRITE_ONCE(idx->entries, idx->entries - 1);
	}
	if (e->nr_refs >= 2) {
		WRITE_ONCE(idx->shared, idx->shared - 1);
		WRITE_ONCE(idx->extra_refs, idx->extra_refs - (e->nr_refs - 1));
	}
	if (xa_get_mark(&idx->by_host, e->host, DEDUP_MARK_CLEAR)) {
		if (e->cap) {
			WRITE_ONCE(idx->array_bytes, idx->array_bytes - e->cap * sizeof(u64));
			kfree(e->guests);
			e->cap = 0;
		}
		e->nr_refs = 0;
		e->state = DEDUP_DEAD;
		WRITE_ONCE(idx->dead, idx->dead + 1);
		return;
	}
	xa_erase(&idx->by_host, e->host);
	free_entry(idx, e);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_remove);

/**
 * dedup_add_ref() - guest cluster @guest now shares @e's cluster.
 * @idx: index.
 * @e: a READY entry.
 * @guest: the new referrer.
 * @first: if the entry had one referrer, that referrer: its COPIED flag
 *	must be cleared, since the refcount becomes two.
 * @gfp: allocation flags for the referrer array.
 *
 * The array counts against the index's memory limit.
 * Return: the number of referrers before (1 means *@first is set), -ENOSPC
 * at the memory limit or -ENOMEM (nothing changed).
 */
int dedup_add_ref(struct dedup_index *idx, struct dedup_entry *e, u64 guest,
		  u64 *first, gfp_t gfp)
{
	u32 n = e->nr_refs;

	if (!n) {
		/* An UNKEYED entry being given its referrers (load, rebuild). */
		e->guest = guest;
		e->nr_refs = 1;
		return 0;
	}
	/* The next array: 4 slots for the second referrer, then doubled. */
	if (n == U32_MAX || (n >= e->cap && over_limit(idx, (e->cap ?: 4) * sizeof(u64))))
		return -ENOSPC;
	if (n == 1) {
		u64 *a = kmalloc_array(4, sizeof(u64), gfp);

		if (!a)
			return -ENOMEM;
		*first = e->guest;
		a[0] = e->guest;
		e->guests = a;
		e->cap = 4;
		WRITE_ONCE(idx->array_bytes, idx->array_bytes + 4 * sizeof(u64));
		WRITE_ONCE(idx->shared, idx->shared + 1);
	} else if (n == e->cap) {
		u64 *a = krealloc_array(e->guests, 2 * e->cap, sizeof(u64), gfp);

		if (!a)
			return -ENOMEM;
		WRITE_ONCE(idx->array_bytes, idx->array_bytes + e->cap * sizeof(u64));
		e->guests = a;
		e->cap *= 2;
	}
	e->guests[n] = guest;
	e->nr_refs = n + 1;
	WRITE_ONCE(idx->extra_refs, idx->extra_refs + 1);
	return n;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_add_ref);

/**
 * dedup_drop_ref() - guest cluster @guest no longer points to host cluster
 *	@host.
 * @idx: index.
 * @host: host cluster index.
 * @guest: the referrer that went.
 *
 * Return: what happened, see enum dedup_drop.  A @guest the entry does not
 * list (a reference the index never knew) changes nothing.
 */
enum dedup_drop dedup_drop_ref(struct dedup_index *idx, u64 host, u64 guest)
{
	struct dedup_entry *e = dedup_find_host(idx, host);
	u64 survivor;
	u32 i;

	if (!e || e->state == DEDUP_WRITING)
		return DEDUP_DROP_NONE;
	if (e->nr_refs == 1) {
		if (e->guest != guest)
			return DEDUP_DROP_NONE;
		dedup_remove(idx, e);
		return DEDUP_DROP_GONE;
	}
	for (i = 0; i < e->nr_refs && e->guests[i] != guest; i++)
		;
	if (i == e->nr_refs)
		return DEDUP_DROP_NONE;
	e->guests[i] = e->guests[--e->nr_refs];
	WRITE_ONCE(idx->extra_refs, idx->extra_refs - 1);
	if (e->nr_refs > 1)
		return DEDUP_DROP_SHARED;

	/* Back to one referrer, the survivor: inline again. */
	survivor = e->guests[0];
	WRITE_ONCE(idx->array_bytes, idx->array_bytes - e->cap * sizeof(u64));
	WRITE_ONCE(idx->shared, idx->shared - 1);
	kfree(e->guests);
	e->cap = 0;
	e->guest = survivor;
	return DEDUP_DROP_UNIQUE;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_drop_ref);

/* Take @e out of the rbtree, give it the key of @digest, put it back. */
static int set_key(struct dedup_index *idx, struct dedup_entry *e, const u8 *digest)
{
	if (RB_EMPTY_NODE(&e->node)) {
		WRITE_ONCE(idx->unkeyed, idx->unkeyed - 1);
		WRITE_ONCE(idx->entries, idx->entries + 1);
	} else {
		rb_erase(&e->node, &idx->by_digest);
	}
	make_key(idx, digest, e->key);
	if (rb_find_add(&e->node, &idx->by_digest, entry_cmp)) {
		/* Another entry has the digest: @e goes. */
		RB_CLEAR_NODE(&e->node);
		WRITE_ONCE(idx->entries, idx->entries - 1);
		WRITE_ONCE(idx->unkeyed, idx->unkeyed + 1);
		dedup_remove(idx, e);
		return -EEXIST;
	}
	return 0;
}

/**
 * dedup_rekey_writing() - the cluster of entry @e, with exactly one
 *	referrer, is about to be overwritten in place with contents of digest
 *	@digest.
 * @idx: index.
 * @e: a READY or UNKEYED entry; it stays in the xarray all along, so map()
 *	never finds the cluster unindexed and never writes into it meanwhile.
 * @digest: the new contents' digest; no entry has it.
 *
 * The entry becomes WRITING with no referrer, as after
 * dedup_insert_writing(); dedup_write_done() follows.  A cluster that two
 * or more guest clusters reference is never written in place: its other
 * referrers would see the new contents.
 * Return: 0; -EBUSY when @e has not exactly one referrer (nothing
 * changed); -EEXIST (a caller bug: the entry is removed).
 */
int dedup_rekey_writing(struct dedup_index *idx, struct dedup_entry *e,
			const u8 *digest)
{
	int r;

	if (e->nr_refs != 1 || (e->state != DEDUP_READY && e->state != DEDUP_UNKEYED))
		return -EBUSY;
	dedup_forget_slot(idx, e);
	/* The new contents are the target's own. */
	dedup_set_unverified(idx, e, false);
	r = set_key(idx, e, digest);
	if (r)
		return r;
	e->state = DEDUP_WRITING;
	e->nr_refs = 0;
	INIT_LIST_HEAD(&e->waiters);
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_rekey_writing);

/**
 * dedup_rekey() - a READY entry's cluster turned out to hold contents of
 *	digest @digest, not those of its key (a wrong slot in a loaded
 *	table): the entry keeps its referrers under the right key.
 * @idx: index.
 * @e: a READY entry.
 * @digest: the digest of the bytes the cluster holds.
 *
 * The slot on disk is zeroed and the new key written by a later flush.
 * Return: 0, or -EEXIST when another entry has @digest (@e is removed).
 */
int dedup_rekey(struct dedup_index *idx, struct dedup_entry *e, const u8 *digest)
{
	int r;

	dedup_forget_slot(idx, e);
	dedup_set_unverified(idx, e, false);
	r = set_key(idx, e, digest);
	if (!r)
		mark_dirty(idx, e);
	return r;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_rekey);

/**
 * dedup_unverify_all() - every READY entry is a hint again: its cluster is
 *	compared with the new contents before its next share.
 * @idx: index.
 *
 * After a resume: the image was not the target's own while it was suspended.
 */
void dedup_unverify_all(struct dedup_index *idx)
{
	struct dedup_entry *e;
	unsigned long host;

	xa_for_each(&idx->by_host, host, e) {
		if (e->state == DEDUP_READY)
			dedup_set_unverified(idx, e, true);
		if (!(host & 1023))
			cond_resched();
	}
}
EXPORT_SYMBOL_IF_KUNIT(dedup_unverify_all);

/**
 * dedup_below_ceiling() - may a cluster with refcount @rc take one more
 *	reference?  At the ceiling (2^refcount_bits - 1) the next identical
 *	write gets a copy of its own.
 * @rc: the refcount.
 * @refcount_order: log2 of the image's refcount width.
 */
bool dedup_below_ceiling(u64 rc, u32 refcount_order)
{
	return rc < qcow2_refcount_max(refcount_order);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_below_ceiling);

/**
 * dedup_is_zero() - is the cluster all zeros (a zero entry, no cluster)?
 * @buf: the cluster.
 * @len: its size.
 */
bool dedup_is_zero(const void *buf, size_t len)
{
	return !memchr_inv(buf, 0, len);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_is_zero);
