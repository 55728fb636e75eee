#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 20-malformed: the target refuses every malformed or unsupported image with
# the documented message, writes nothing to it, and still accepts the valid
# image it was derived from.
#
# One valid qcow2 v3 image (64 KiB clusters, 64 MiB, 1 MiB of data) is made
# with qemu-img/qemu-io; each case is a copy with one header field (or the
# first L1 entry, or a header extension) patched.  All copies are attached to
# UML at once (16 ubd disks per boot, so two boots); inside, each
# `dmsetup create` must fail and dmesg must show the expected ti->error in
# the device-mapper table line and, for refusals of the image itself, the
# target's "<dev>: <message> (value N = 0xN)" line.  The table-length and
# optional-argument cases use the valid copy with a bad table line.
# Afterwards every copy must be bit-for-bit unchanged and the valid one must
# still pass `qemu-img check`.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

PATCH=$E2E_DIR/qcow2_patch.py
MAX_UBD=16

# Field offsets in struct qcow2_header (include/uapi/qcow2dedup/qcow2.h).
OFF_MAGIC=0 OFF_VERSION=4 OFF_BACKING_OFFSET=8 OFF_BACKING_SIZE=16
OFF_CLUSTER_BITS=20 OFF_CRYPT=32 OFF_L1_SIZE=36 OFF_L1_OFFSET=40
OFF_REFTABLE_OFFSET=48 OFF_REFTABLE_CLUSTERS=56 OFF_NB_SNAPSHOTS=60
OFF_SNAPSHOTS_OFFSET=64 OFF_INCOMPAT=72 OFF_REFCOUNT_ORDER=96
OFF_HEADER_LENGTH=100 OFF_COMPRESSION_TYPE=104

base=$WORK/base.qcow2
log "creating the base image"
qemu-img create -q -f qcow2 -o cluster_size=65536,compat=1.1 "$base" 64M
qemu-io -f qcow2 -c 'write -P 0xab 0 1M' "$base" >/dev/null
qemu-img check -q "$base"
pad "$base"
SECTORS=$(sectors "$base")
DEV_BYTES=$(stat -c %s "$base")
# What the valid image must read as: qemu-img's own view of the guest disk.
qemu-img convert -f qcow2 -O raw "$base" "$WORK/expected.raw"

get() { python3 "$PATCH" "$base" "$1" "$2" get; }
L1_OFFSET=$(get $OFF_L1_OFFSET 8)
HEADER_LENGTH=$(get $OFF_HEADER_LENGTH 4)
L1E0=$(get "$L1_OFFSET" 8)
log "image: $SECTORS sectors, device $DEV_BYTES bytes, L1 at $L1_OFFSET," \
    "header_length $HEADER_LENGTH, L1[0] $(printf '0x%x' "$L1E0")"
[ "$L1E0" != 0 ] || fail "the base image has no L1 entry"
[ "$HEADER_LENGTH" -ge 112 ] || fail "qemu-img wrote no compression_type byte"
[ "$(get "$HEADER_LENGTH" 4)" -ne 0 ] || fail "the base image has no header extension"
BEYOND=$((256 << 20))	# cluster-aligned, past the 2 MiB device
[ "$DEV_BYTES" -lt "$BEYOND" ] || fail "image larger than expected"

# Disks in attach order, and the cases: name, disk index, table length,
# extra table arguments, expected ti->error, expected value of the
# target's DMERR line ("" when the target logs none), and "refuse"/"accept".
disks=() c_name=() c_disk=() c_sect=() c_extra=() c_msg=() c_value=() c_kind=()

add_case() {
	c_name+=("$1") c_disk+=("$2") c_sect+=("$3") c_extra+=("$4")
	c_msg+=("$5") c_value+=("$6") c_kind+=("$7")
}

# malformed NAME MESSAGE VALUE OFFSET:WIDTH:OP:VALUE...: a patched copy.
malformed() {
	local name=$1 msg=$2 value=$3 p off width op val
	local img=$WORK/$name.qcow2
	shift 3
	cp "$base" "$img"
	for p in "$@"; do
		IFS=: read -r off width op val <<<"$p"
		python3 "$PATCH" "$img" "$off" "$width" "$op" "$val" >/dev/null
	done
	disks+=("$img")
	add_case "$name" $((${#disks[@]} - 1)) "$SECTORS" "" "$msg" "$value" refuse
}

valid=$WORK/valid.qcow2
cp "$base" "$valid"
disks+=("$valid")
add_case valid 0 "$SECTORS" "" "" "" accept
add_case table-length-short 0 $((SECTORS - 1)) "" \
	"Target length does not match the image's virtual size" $((SECTORS - 1)) refuse
add_case table-length-long 0 $((SECTORS + 1)) "" \
	"Target length does not match the image's virtual size" $((SECTORS + 1)) refuse
add_case unknown-option 0 "$SECTORS" " 1 frobnicate" \
	"Unknown or incomplete optional argument" "" refuse
add_case hash-without-name 0 "$SECTORS" " 1 hash" \
	"Unknown or incomplete optional argument" "" refuse
add_case hash-unknown 0 "$SECTORS" " 2 hash nosuchhash" \
	"Unknown hash algorithm (not an shash this kernel has)" "" refuse
add_case hash-keyed 0 "$SECTORS" " 2 hash hmac(sha256)" \
	"Keyed hash algorithms are not supported" "" refuse
add_case hash-name-32-chars 0 "$SECTORS" " 2 hash hmac(hmac(hmac(sha256-generic)))" \
	"Hash algorithm name too long (at most 31 characters)" "" refuse
add_case hash-64bit-without-verify 0 "$SECTORS" " 2 hash xxhash64" \
	"Hash digest shorter than 128 bits: add verify" "" refuse
# md5 and sha1 have known collisions (dedup_hash_verdict()): by name, by
# driver name, and accepted with verify.
add_case hash-md5-without-verify 0 "$SECTORS" " 2 hash md5" \
	"Hash with known collisions (md4, md5, sha1): add verify" "" refuse
add_case hash-sha1-driver-without-verify 0 "$SECTORS" " 2 hash sha1-generic" \
	"Hash with known collisions (md4, md5, sha1): add verify" "" refuse
add_case hash-md5-with-verify 0 "$SECTORS" " 3 hash md5 verify" "" "" accept
add_case index-limit-0 0 "$SECTORS" " 2 index_limit 0" \
	"Invalid index_limit (MiB, at least 1)" "" refuse
add_case index-limit-word 0 "$SECTORS" " 2 index_limit lots" \
	"Invalid index_limit (MiB, at least 1)" "" refuse
add_case nodedup-with-verify 0 "$SECTORS" " 2 nodedup verify" \
	"nodedup excludes verify, hash, index_limit and flush_interval" "" refuse
add_case nodedup-with-interval 0 "$SECTORS" " 3 nodedup flush_interval 100" \
	"nodedup excludes verify, hash, index_limit and flush_interval" "" refuse
add_case flush-interval-0 0 "$SECTORS" " 2 flush_interval 0" \
	"Invalid flush_interval (milliseconds, 1 to 3600000)" "" refuse
add_case flush-interval-huge 0 "$SECTORS" " 2 flush_interval 3600001" \
	"Invalid flush_interval (milliseconds, 1 to 3600000)" "" refuse
add_case flush-interval-missing 0 "$SECTORS" " 1 flush_interval" \
	"Unknown or incomplete optional argument" "" refuse
add_case too-many-options 0 "$SECTORS" " 9 verify verify verify verify verify verify verify verify verify" \
	"Invalid number of optional arguments" "" refuse
add_case all-options 0 "$SECTORS" " 7 hash blake2b-256 verify index_limit 4 flush_interval 250" "" "" accept
add_case extra-argument 0 "$SECTORS" " 0 frobnicate" \
	"Unexpected extra arguments" "" refuse

malformed bad-magic "Not a qcow2 image (bad magic)" $((0x514649fa)) \
	$OFF_MAGIC:4:set:0x514649fa
malformed version-1 "Unsupported qcow2 version" 1 $OFF_VERSION:4:set:1
malformed version-4 "Unsupported qcow2 version" 4 $OFF_VERSION:4:set:4
malformed cluster-bits-8 "Invalid cluster_bits (must be 9..21)" 8 \
	$OFF_CLUSTER_BITS:4:set:8
malformed cluster-bits-22 "Invalid cluster_bits (must be 9..21)" 22 \
	$OFF_CLUSTER_BITS:4:set:22
malformed header-length-100 "Invalid header_length" 100 $OFF_HEADER_LENGTH:4:set:100
malformed header-length-108 "Invalid header_length" 108 $OFF_HEADER_LENGTH:4:set:108
malformed refcount-order-7 "Invalid refcount_order (must be 0..6)" 7 \
	$OFF_REFCOUNT_ORDER:4:set:7
malformed encrypted "Encrypted images are not supported" 1 $OFF_CRYPT:4:set:1
malformed dirty "Image is dirty: run 'qemu-img check -r all' first" 1 \
	$OFF_INCOMPAT:8:or:0x1
malformed corrupt "Image is marked corrupt: run 'qemu-img check -r all'" 2 \
	$OFF_INCOMPAT:8:or:0x2
malformed data-file "External data files are not supported" 4 $OFF_INCOMPAT:8:or:0x4
malformed extended-l2 "Extended L2 entries (subclusters) are not supported" 16 \
	$OFF_INCOMPAT:8:or:0x10
malformed unknown-incompat-bit20 "Unknown incompatible feature bits" $((1 << 20)) \
	$OFF_INCOMPAT:8:or:0x100000
malformed zstd-without-bit "Invalid compression type" 1 $OFF_COMPRESSION_TYPE:1:set:1
malformed backing-file "Images with a backing file are not supported" 512 \
	$OFF_BACKING_OFFSET:8:set:512 $OFF_BACKING_SIZE:4:set:8
malformed l1-offset-misaligned "L1 table misaligned or beyond the device" \
	$((L1_OFFSET + 512)) $OFF_L1_OFFSET:8:add:512
malformed l1-offset-beyond "L1 table misaligned or beyond the device" $BEYOND \
	$OFF_L1_OFFSET:8:set:$BEYOND
malformed l1-size-0 "l1_size too small for the virtual size" 0 $OFF_L1_SIZE:4:set:0
malformed l1-size-huge "l1_size too large" $((0x01000000)) \
	$OFF_L1_SIZE:4:set:0x01000000
malformed reftable-offset-misaligned "Refcount table misaligned or beyond the device" \
	$(($(get $OFF_REFTABLE_OFFSET 8) + 512)) $OFF_REFTABLE_OFFSET:8:add:512
malformed reftable-offset-beyond "Refcount table misaligned or beyond the device" \
	$BEYOND $OFF_REFTABLE_OFFSET:8:set:$BEYOND
malformed reftable-clusters-0 "Refcount table size invalid" 0 \
	$OFF_REFTABLE_CLUSTERS:4:set:0
malformed snapshots-offset-misaligned "Snapshot table misaligned or beyond the device" \
	$((0x10000 + 512)) $OFF_NB_SNAPSHOTS:4:set:1 $OFF_SNAPSHOTS_OFFSET:8:set:$((0x10000 + 512))
malformed l1-entry-reserved-bit "Invalid L1 table entry" 0 "$L1_OFFSET:8:or:0x2"
malformed l1-entry-misaligned "Invalid L1 table entry" 0 "$L1_OFFSET:8:add:512"
malformed l1-entry-beyond "Invalid L1 table entry" 0 "$L1_OFFSET:8:set:$BEYOND"
malformed extension-past-cluster "Invalid header extension" "$HEADER_LENGTH" \
	"$((HEADER_LENGTH + 4)):4:set:0x10000"

sha256sum "${disks[@]}" >"$WORK/sums"

# The inner script: one per boot, the cases whose disk that boot attaches.
inner_prelude() {
	cat <<'EOF'
#!/bin/bash
# Generated by 20-malformed.sh; runs as root inside UML.  Every exec costs
# ~75 ms in UML, so matching is done with bash builtins.
set -u
failed=0
bad() { echo "FAIL $1: $2"; failed=1; }
errf=/tmp/dmsetup.err
log=
# take_log: the kernel messages since the last call, in $log.
take_log() { log=$(dmesg -c); }
# has_line A [B]: some line of $log contains A (and B).
has_line() {
	local line
	while IFS= read -r line; do
		[[ $line == *"$1"* && $line == *"${2-}"* ]] && return 0
	done <<<"$log"
	return 1
}
# kmsg: the device-mapper lines of $log, on one line, for a FAIL report.
kmsg() {
	local line out=
	while IFS= read -r line; do
		[[ $line == *device-mapper* ]] && out+="$line|"
	done <<<"$log"
	printf '%s' "$out"
}

# gone NAME DM: the mapped device DM does not exist (removes it if it does).
gone() {
	if dmsetup info "$2" >/dev/null 2>&1; then
		bad "$1" "device $2 exists"
		dmsetup remove "$2" >/dev/null 2>&1
		return 1
	fi
	return 0
}

# refuse NAME DEV SECTORS EXTRA MESSAGE VALUE
refuse() {
	local name=$1 dev=$2 sect=$3 extra=$4 msg=$5 value=$6
	local dm=q2d-$name table="0 $3 qcow2dedup $2$4" want ok=1
	if dmsetup create "$dm" --table "$table" >"$errf" 2>&1; then
		take_log
		bad "$name" "accepted: $table"
		dmsetup remove "$dm" >/dev/null 2>&1
		return
	fi
	take_log
	gone "$name" "$dm" || return
	if ! has_line 'device-mapper: table: ' ": qcow2dedup: $msg ("; then
		bad "$name" "no table line with 'qcow2dedup: $msg'; dmesg: $(kmsg)"
		ok=0
	fi
	if [ -n "$value" ]; then
		want="device-mapper: qcow2dedup: ${dev#/dev/}: $msg (value $value = 0x$(printf %x "$value"))"
		if ! has_line "$want"; then
			bad "$name" "no line '$want'; dmesg: $(kmsg)"
			ok=0
		fi
	fi
	[ $ok = 1 ] && echo "ok $name"
}

# accept NAME DEV SECTORS EXTRA EXPECTED_RAW
accept() {
	local name=$1 dev=$2 sect=$3 extra=$4 raw=$5 dm=q2d-$1 st n w t
	if ! dmsetup create "$dm" --table "0 $sect qcow2dedup $dev$extra" >"$errf" 2>&1; then
		take_log
		bad "$name" "refused: $(<"$errf"); dmesg: $(kmsg)"
		gone "$name" "$dm"
		return
	fi
	# The options took: the table line shows each of them.
	t=$(dmsetup table "$dm")
	for w in $extra; do
		[[ " $t " == *" $w "* ]] || bad "$name" "table '$t' lacks '$w'"
	done
	n=$(blockdev --getsz "/dev/mapper/$dm")
	[ "$n" = "$sect" ] || bad "$name" "device has $n sectors, want $sect"
	st=$(dmsetup status "$dm")
	case "$st" in
	"0 $sect qcow2dedup write 3 65536 "*) ;;
	*) bad "$name" "status: $st" ;;
	esac
	cmp "/dev/mapper/$dm" "$raw" || bad "$name" "content differs from qemu-img's"
	if ! dmsetup remove "$dm" >"$errf" 2>&1; then
		bad "$name" "remove failed: $(<"$errf")"
		return
	fi
	take_log
	gone "$name" "$dm" || return
	if has_line qcow2dedup || has_line 'device-mapper: table'; then
		bad "$name" "unexpected kernel messages: $(kmsg)"
		return
	fi
	echo "ok $name"
}

dmesg -C
EOF
}

letters=(a b c d e f g h i j k l m n o p)
nboots=$(( (${#disks[@]} + MAX_UBD - 1) / MAX_UBD ))
rc=0
for ((b = 0; b < nboots; b++)); do
	first=$((b * MAX_UBD))
	args=()
	for ((i = first; i < first + MAX_UBD && i < ${#disks[@]}; i++)); do
		args+=(-d "${disks[i]}")
	done
	inner=$WORK/inner-$b.sh
	{
		inner_prelude
		for ((c = 0; c < ${#c_name[@]}; c++)); do
			d=${c_disk[c]}
			((d >= first && d < first + MAX_UBD)) || continue
			dev=/dev/ubd${letters[d - first]}
			if [ "${c_kind[c]}" = accept ]; then
				printf 'accept %q %q %q %q %q\n' "${c_name[c]}" "$dev" \
					"${c_sect[c]}" "${c_extra[c]}" "$WORK/expected.raw"
			else
				printf 'refuse %q %q %q %q %q %q\n' "${c_name[c]}" "$dev" \
					"${c_sect[c]}" "${c_extra[c]}" "${c_msg[c]}" "${c_value[c]}"
			fi
		done
		# shellcheck disable=SC2016 # expands in the inner script
		echo 'exit $failed'
	} >"$inner"
	chmod +x "$inner"
	log "boot $((b + 1))/$nboots: $((${#args[@]} / 2)) disks," \
	    "$(grep -cE '^(accept|refuse) ' "$inner") cases"
	if ! uml "${args[@]}" -- "$inner"; then
		echo "FAIL: boot $((b + 1)): the inner script or the kernel reported a failure"
		rc=1
	fi
done

log "checking that no image was written"
if ! sha256sum --quiet -c "$WORK/sums"; then
	echo "FAIL: an image changed (see above)"
	rc=1
fi
log "qemu-img check on the valid copy"
if ! qemu-img check "$valid"; then
	echo "FAIL: qemu-img check on the valid copy"
	rc=1
fi
total=${#c_name[@]}
if [ $rc -eq 0 ]; then
	log "pass: $total cases on ${#disks[@]} images in $nboots boots"
else
	log "fail ($total cases)"
fi
exit $rc
