// SPDX-License-Identifier: GPL-2.0
/*
 * The deduplication index: see dedup-index.h.  No I/O here; the target's
 * worker turns what these functions report into qcow2 metadata changes.
 */
#include <kunit/visibility.h>
#include <linux/hash.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>

#include "dm-qcow2dedup-compat.h"
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

/* @host's entry lost its key or its memory: see dedup_host_stamp(). */
static void note_change(struct dedup_index *idx, u64 host)
{
	idx->host_changes[hash_64(host, DEDUP_STAMP_BITS)]++;
}

/**
 * dedup_host_stamp() - a stamp of the changes that can affect the entry of
 *	host cluster @host: equal before and after a wait, the entry found
 *	for @host before it is the same, for the same bytes.
 * @idx: index.
 * @host: host cluster index.
 *
 * Both counters only grow, so their sum is equal only if both are.
 */
u64 dedup_host_stamp(const struct dedup_index *idx, u64 host)
{
	return idx->changes + idx->host_changes[hash_64(host, DEDUP_STAMP_BITS)];
}
EXPORT_SYMBOL_IF_KUNIT(dedup_host_stamp);

static size_t refs_bytes(u32 cap)
{
	return struct_size_t(struct dedup_refs, guest, cap);
}

static void set_state(struct dedup_entry *e, enum dedup_state state)
{
	e->host_flags = (e->host_flags & ~(3ULL << DEDUP_STATE_SHIFT)) |
			((u64)state << DEDUP_STATE_SHIFT);
}

static void set_refs_kind(struct dedup_entry *e, enum dedup_refs_kind kind)
{
	e->host_flags = (e->host_flags & ~(3ULL << DEDUP_REFS_SHIFT)) |
			((u64)kind << DEDUP_REFS_SHIFT);
}

static void set_flag(struct dedup_entry *e, u64 flag, bool v)
{
	if (v)
		e->host_flags |= flag;
	else
		e->host_flags &= ~flag;
}

/* Free @e's referrer array, if it has one; no referrer is left. */
static void drop_refs(struct dedup_index *idx, struct dedup_entry *e)
{
	if (dedup_entry_refs_kind(e) == DEDUP_REFS_ARRAY) {
		WRITE_ONCE(idx->array_bytes, idx->array_bytes - refs_bytes(e->refs->cap));
		kfree(e->refs);
	}
	set_refs_kind(e, DEDUP_REFS_NONE);
	e->guest = 0;
}

static void free_entry(struct dedup_index *idx, struct dedup_entry *e)
{
	drop_refs(idx, e);
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
	idx->changes++;
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
	if (!xa_get_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_DIRTY)) {
		xa_set_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_DIRTY);
		WRITE_ONCE(idx->dirty, idx->dirty + 1);
	}
}

static void unmark_dirty(struct dedup_index *idx, struct dedup_entry *e)
{
	if (xa_get_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_DIRTY)) {
		xa_clear_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_DIRTY);
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

	return e && dedup_entry_state(e) != DEDUP_DEAD ? e : NULL;
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

/*
 * A new entry for host cluster @host, in the xarray only; its key and
 * rbtree node are the caller's to set.  Return: 0, -ENOSPC at the memory
 * limit (or for a cluster past what a qcow2 offset can name), -EEXIST when
 * @host is indexed, or -ENOMEM.
 */
static int new_entry(struct dedup_index *idx, u64 host, enum dedup_state state,
		     struct dedup_entry **entry, gfp_t gfp)
{
	struct dedup_entry *e;
	int r;

	if (host > DEDUP_HOST_MASK || over_entry_limit(idx, dedup_entry_bytes()))
		return -ENOSPC;
	e = kmem_cache_zalloc(entry_cache, gfp);
	if (!e)
		return -ENOMEM;
	e->host_flags = host;
	set_state(e, state);
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
 * @writer: what writes it (the index only hands it back: dedup_entry_writer()).
 * @entry: the new entry, in state WRITING, with no referrer.
 *
 * Return: 0; -ENOSPC when the index is at its memory limit, -ENOMEM when
 * memory is short (the caller writes the cluster unindexed); -EEXIST.
 */
int dedup_insert_writing(struct dedup_index *idx, const u8 *digest, u64 host,
			 void *writer, struct dedup_entry **entry)
{
	struct dedup_entry *e;
	int r;

	r = new_entry(idx, host, DEDUP_WRITING, &e, GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN);
	if (r)
		return r;
	make_key(idx, digest, e->key);
	e->writer = writer;
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
		set_flag(e, DEDUP_F_PERSISTED, true);
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
	set_state(e, DEDUP_READY);
	WRITE_ONCE(idx->unkeyed, idx->unkeyed - 1);
	WRITE_ONCE(idx->entries, idx->entries + 1);
	if (!dedup_entry_persisted(e))
		mark_dirty(idx, e);
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_key);

/*
 * Keying a whole loaded table at once.  Inserting a million random keys one
 * by one into the tree costs a cache miss per level (1.3 us each at the end
 * of a 1M-entry load in UML, 70% of the load); keys in ascending order each
 * go right of the last one, a link and a recolouring at the right edge.
 */
static int sort_ref_cmp(const void *a, const void *b)
{
	const struct dedup_sort_ref *x = a, *y = b;

	if (x->prefix != y->prefix)
		return x->prefix < y->prefix ? -1 : 1;
	return memcmp(x->e->key, y->e->key, DEDUP_KEY_MAX);
}

/* Below this, sort() alone is cheaper than four counting passes. */
#define SORT_RADIX_MIN		4096
#define SORT_RADIX_BITS		16

static unsigned int radix_digit(u64 prefix, unsigned int shift)
{
	return (prefix >> shift) & (BIT(SORT_RADIX_BITS) - 1);
}

/**
 * dedup_sort_refs() - order entries by key, as the tree does.
 * @a: the entries, each with the first 8 bytes of its key (big-endian).
 * @tmp: scratch, @n items (unused below SORT_RADIX_MIN: may be NULL).
 * @count: scratch, BIT(SORT_RADIX_BITS) counters (likewise).
 * @n: number of entries.
 *
 * A stable radix sort of the prefixes in four 16-bit passes, then sort() of
 * each run of equal prefixes by the whole key: O(n) for digests, and still
 * O(n log n) for a crafted table whose keys all share a prefix.
 */
void dedup_sort_refs(struct dedup_sort_ref *a, struct dedup_sort_ref *tmp,
		     u32 *count, unsigned long n)
{
	struct dedup_sort_ref *src = a, *dst = tmp;
	unsigned long i, j;
	unsigned int shift;

	if (n < SORT_RADIX_MIN) {
		sort(a, n, sizeof(*a), sort_ref_cmp, NULL);
		return;
	}
	for (shift = 0; shift < 64; shift += SORT_RADIX_BITS) {
		u32 sum = 0, c;

		memset(count, 0, sizeof(u32) << SORT_RADIX_BITS);
		for (i = 0; i < n; i++)
			count[radix_digit(src[i].prefix, shift)]++;
		for (i = 0; i < BIT(SORT_RADIX_BITS); i++) {
			c = count[i];
			count[i] = sum;
			sum += c;
		}
		for (i = 0; i < n; i++)
			dst[count[radix_digit(src[i].prefix, shift)]++] = src[i];
		swap(src, dst);
		cond_resched();
	}
	/* An even number of passes: the result is back in @a. */
	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n && a[j].prefix == a[i].prefix; j++)
			;
		if (j - i > 1) {
			sort(a + i, j - i, sizeof(*a), sort_ref_cmp, NULL);
			cond_resched();
		}
	}
}
EXPORT_SYMBOL_IF_KUNIT(dedup_sort_refs);

/* The tree is empty and @a is in key order: append each at the right edge. */
static unsigned long key_sorted(struct dedup_index *idx, struct dedup_sort_ref *a,
				unsigned long n, struct dedup_entry **refused)
{
	struct dedup_entry *last = NULL;
	unsigned long i, nr_refused = 0;

	for (i = 0; i < n; i++) {
		struct dedup_entry *e = a[i].e;

		if (last && !memcmp(last->key, e->key, DEDUP_KEY_MAX)) {
			refused[nr_refused++] = e;
			continue;
		}
		if (last)
			rb_link_node(&e->node, &last->node, &last->node.rb_right);
		else
			rb_link_node(&e->node, NULL, &idx->by_digest.rb_node);
		rb_insert_color(&e->node, &idx->by_digest);
		set_state(e, DEDUP_READY);
		if (!dedup_entry_persisted(e))
			mark_dirty(idx, e);
		last = e;
		if (!(i & 4095))
			cond_resched();
	}
	WRITE_ONCE(idx->unkeyed, idx->unkeyed - (n - nr_refused));
	WRITE_ONCE(idx->entries, idx->entries + (n - nr_refused));
	return nr_refused;
}

/**
 * dedup_key_many() - dedup_key(@idx, e, NULL) for each of @es.
 * @idx: index.
 * @es: UNKEYED entries with their keys and referrers; on return the first
 *	ones (as many as returned) are those refused, in no order: another
 *	entry has their key, and the caller removes them.
 * @n: number of entries.
 *
 * Into an empty tree, the entries are sorted and appended in key order;
 * otherwise, or when memory for the sort is short, keyed one at a time.
 * Return: how many were refused.
 */
unsigned long dedup_key_many(struct dedup_index *idx, struct dedup_entry **es,
			     unsigned long n)
{
	struct dedup_sort_ref *a = NULL, *tmp = NULL;
	unsigned long i, nr_refused = 0;
	u32 *count = NULL;

	if (RB_EMPTY_ROOT(&idx->by_digest) && n) {
		a = kvmalloc_array(n, sizeof(*a), GFP_KERNEL | __GFP_NOWARN);
		/* The radix sort's scratch; sort() alone needs none. */
		if (n >= SORT_RADIX_MIN) {
			tmp = kvmalloc_array(n, sizeof(*tmp), GFP_KERNEL | __GFP_NOWARN);
			count = kvmalloc_array(BIT(SORT_RADIX_BITS), sizeof(u32),
					       GFP_KERNEL | __GFP_NOWARN);
		}
	}
	if (a && (n < SORT_RADIX_MIN || (tmp && count))) {
		for (i = 0; i < n; i++) {
			a[i].prefix = get_unaligned_be64(es[i]->key);
			a[i].e = es[i];
		}
		dedup_sort_refs(a, tmp, count, n);
		nr_refused = key_sorted(idx, a, n, es);
	} else {
		for (i = 0; i < n; i++)
			if (dedup_key(idx, es[i], NULL))
				es[nr_refused++] = es[i];
	}
	kvfree(count);
	kvfree(tmp);
	kvfree(a);
	return nr_refused;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_key_many);

/**
 * dedup_write_done() - the data of a WRITING entry is on the device and
 *	guest cluster @guest is about to point to it.
 * @idx: index.
 * @e: the entry.
 * @guest: its first referrer.
 *
 * The caller lets the writes that waited on the writer go.
 */
void dedup_write_done(struct dedup_index *idx, struct dedup_entry *e, u64 guest)
{
	set_state(e, DEDUP_READY);
	e->guest = guest;
	set_refs_kind(e, DEDUP_REFS_ONE);
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
	if (!dedup_entry_persisted(e))
		return;
	set_flag(e, DEDUP_F_PERSISTED, false);
	WRITE_ONCE(idx->persisted, idx->persisted - 1);
	if (!xa_get_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_CLEAR)) {
		xa_set_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_CLEAR);
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
	if (xa_get_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_CLEAR)) {
		xa_clear_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_CLEAR);
		WRITE_ONCE(idx->nr_clears, idx->nr_clears - 1);
	}
	if (dedup_entry_state(e) == DEDUP_DEAD) {
		note_change(idx, dedup_entry_host(e));
		xa_erase(&idx->by_host, dedup_entry_host(e));
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
	if (!dedup_entry_persisted(e))
		WRITE_ONCE(idx->persisted, idx->persisted + 1);
	set_flag(e, DEDUP_F_PERSISTED, true);
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
	if (dedup_entry_unverified(e) != v)
		WRITE_ONCE(idx->unverified, v ? idx->unverified + 1 : idx->unverified - 1);
	set_flag(e, DEDUP_F_UNVERIFIED, v);
}
EXPORT_SYMBOL_IF_KUNIT(dedup_set_unverified);

/**
 * dedup_remove() - take an entry out of the index and free it.
 * @idx: index.
 * @e: the entry; if WRITING, the writes that waited on its writer have been
 *	let go.
 *
 * For a data write that failed, and for a cluster about to be overwritten
 * in place (its digest no longer describes it).  An entry whose slot must
 * still be zeroed on disk stays behind as DEAD until dedup_clear_done().
 */
void dedup_remove(struct dedup_index *idx, struct dedup_entry *e)
{
	u32 refs = dedup_nr_refs(e);

	if (dedup_entry_state(e) == DEDUP_DEAD)
		return;
	note_change(idx, dedup_entry_host(e));
	dedup_forget_slot(idx, e);
	dedup_set_unverified(idx, e, false);
	if (RB_EMPTY_NODE(&e->node)) {
		WRITE_ONCE(idx->unkeyed, idx->unkeyed - 1);
	} else {
		rb_erase(&e->node, &idx->by_digest);
		RB_CLEAR_NODE(&e->node);
		WRITE_ONCE(idx->entries, idx->entries - 1);
	}
	if (refs >= 2) {
		WRITE_ONCE(idx->shared, idx->shared - 1);
		WRITE_ONCE(idx->extra_refs, idx->extra_refs - (refs - 1));
	}
	if (xa_get_mark(&idx->by_host, dedup_entry_host(e), DEDUP_MARK_CLEAR)) {
		drop_refs(idx, e);
		set_state(e, DEDUP_DEAD);
		WRITE_ONCE(idx->dead, idx->dead + 1);
		return;
	}
	xa_erase(&idx->by_host, dedup_entry_host(e));
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
	u32 n = dedup_nr_refs(e);
	struct dedup_refs *a;

	if (!n) {
		/* An UNKEYED entry being given its referrers (load, rebuild). */
		e->guest = guest;
		set_refs_kind(e, DEDUP_REFS_ONE);
		return 0;
	}
	if (n == 1) {
		/* 3 slots for the second referrer (32 bytes), then 7, 15... */
		if (over_limit(idx, refs_bytes(3)))
			return -ENOSPC;
		a = kmalloc(refs_bytes(3), gfp);
		if (!a)
			return -ENOMEM;
		*first = e->guest;
		a->nr = 1;
		a->cap = 3;
		a->guest[0] = e->guest;
		e->refs = a;
		set_refs_kind(e, DEDUP_REFS_ARRAY);
		WRITE_ONCE(idx->array_bytes, idx->array_bytes + refs_bytes(3));
		WRITE_ONCE(idx->shared, idx->shared + 1);
	} else if (n == e->refs->cap) {
		u32 cap = 2 * n + 1;

		if (n >= U32_MAX / 4 || over_limit(idx, refs_bytes(cap) - refs_bytes(n)))
			return -ENOSPC;
		a = krealloc(e->refs, refs_bytes(cap), gfp);
		if (!a)
			return -ENOMEM;
		WRITE_ONCE(idx->array_bytes, idx->array_bytes + refs_bytes(cap) - refs_bytes(n));
		a->cap = cap;
		e->refs = a;
	}
	e->refs->guest[n] = guest;
	e->refs->nr = n + 1;
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
	struct dedup_refs *a;
	u64 survivor;
	u32 i;

	if (!e || dedup_entry_state(e) == DEDUP_WRITING)
		return DEDUP_DROP_NONE;
	switch (dedup_entry_refs_kind(e)) {
	case DEDUP_REFS_ONE:
		if (e->guest != guest)
			return DEDUP_DROP_NONE;
		dedup_remove(idx, e);
		return DEDUP_DROP_GONE;
	case DEDUP_REFS_ARRAY:
		break;
	default:
		return DEDUP_DROP_NONE;
	}
	a = e->refs;
	for (i = 0; i < a->nr && a->guest[i] != guest; i++)
		;
	if (i == a->nr)
		return DEDUP_DROP_NONE;
	a->guest[i] = a->guest[--a->nr];
	WRITE_ONCE(idx->extra_refs, idx->extra_refs - 1);
	if (a->nr > 1)
		return DEDUP_DROP_SHARED;

	/* Back to one referrer, the survivor: inline again. */
	survivor = a->guest[0];
	WRITE_ONCE(idx->shared, idx->shared - 1);
	drop_refs(idx, e);
	e->guest = survivor;
	set_refs_kind(e, DEDUP_REFS_ONE);
	return DEDUP_DROP_UNIQUE;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_drop_ref);

/* Take @e out of the rbtree, give it the key of @digest, put it back. */
static int set_key(struct dedup_index *idx, struct dedup_entry *e, const u8 *digest)
{
	note_change(idx, dedup_entry_host(e));
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
 * @writer: what writes it (dedup_entry_writer()).
 *
 * The entry becomes WRITING with no referrer, as after
 * dedup_insert_writing(); dedup_write_done() follows.  A cluster that two
 * or more guest clusters reference is never written in place: its other
 * referrers would see the new contents.
 * Return: 0; -EBUSY when @e has not exactly one referrer (nothing
 * changed); -EEXIST (a caller bug: the entry is removed).
 */
int dedup_rekey_writing(struct dedup_index *idx, struct dedup_entry *e,
			const u8 *digest, void *writer)
{
	int r;

	if (dedup_nr_refs(e) != 1 ||
	    (dedup_entry_state(e) != DEDUP_READY && dedup_entry_state(e) != DEDUP_UNKEYED))
		return -EBUSY;
	dedup_forget_slot(idx, e);
	/* The new contents are the target's own. */
	dedup_set_unverified(idx, e, false);
	r = set_key(idx, e, digest);
	if (r)
		return r;
	set_state(e, DEDUP_WRITING);
	drop_refs(idx, e);
	e->writer = writer;
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
		if (dedup_entry_state(e) == DEDUP_READY)
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

/*
 * Hashes with published collisions: anyone can make two clusters with one
 * digest (md5 in seconds, sha1 since 2017), so a digest match proves
 * nothing.  In a guest with several users, one of them could then make
 * another's write read back bytes of his choosing.
 */
static const char * const dedup_broken_hashes[] = { "md4", "md5", "sha1" };

/**
 * dedup_hash_verdict() - may a match of this hash's digests share a cluster?
 * @alg: the algorithm's name (the crypto API's cra_name: "md5" also for
 *	"md5-generic" or an accelerated driver).
 * @digest_size: its digest, in bytes.
 * @verify: every match is compared byte for byte before it is shared.
 */
enum dedup_hash_verdict dedup_hash_verdict(const char *alg, unsigned int digest_size,
					   bool verify)
{
	unsigned int i;

	if (verify)
		return DEDUP_HASH_OK;
	if (digest_size < 16)
		return DEDUP_HASH_SHORT;
	for (i = 0; i < ARRAY_SIZE(dedup_broken_hashes); i++)
		if (!strcmp(alg, dedup_broken_hashes[i]))
			return DEDUP_HASH_BROKEN;
	return DEDUP_HASH_OK;
}
EXPORT_SYMBOL_IF_KUNIT(dedup_hash_verdict);
