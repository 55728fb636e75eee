#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 35-lvm: LVM below and above the target, inside UML, with Debian 12's lvm2.
#
# (a) Image on an LV.  A ubd disk becomes PV/VG/LV; a qcow2 image made on
#     the host (qemu-io data, an internal snapshot, more data after it, a
#     compressed cluster and a zero cluster) is copied into the 64 MiB LV
#     with dd; the target serves /dev/vgq/img; writes (O_DIRECT across
#     clusters, buffered, unaligned 7 KiB, a discard) go through it; the
#     whole disk must then read as the expected raw image, also after a
#     fresh activation.  The LV is copied back to a host file: qemu-img check
#     clean, raw export as expected, the snapshot unchanged.
# (b) PV on the target.  pvcreate/vgcreate/lvcreate on /dev/mapper/qb,
#     ext4 on one LV (files with known sha256), a pattern dd'ed to a second
#     LV; LVM filters: global_filter hides the PV, the devices file
#     (use_devicesfile=1) hides it until it is listed.  vgchange -an, remove.
#     Host: qemu-img check clean, qemu-img convert -O raw.  A second boot
#     attaches that raw file and the qcow2 image: LVM finds the VG on the
#     raw file (and no PV in the qcow2 container itself), fsck and sha256
#     of the files there; then the qcow2 image activated read-only through
#     the target, with the raw disk filtered out, must show the same VG,
#     the same file system and the same pattern.
# (c) Both at once: a PV on a target whose image is on an LV (default
#     scan_lvs = 0 must not hide it), with an LV holding a pattern; the
#     image copied out must pass qemu-img check and hold the label and data.
#
# LVM runs with LVM_SYSTEM_DIR=$WORK/lvm: the host's /etc/lvm is the root
# file system's inside UML and must not get backups of test VGs.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
MiB=1048576

mkdir lvm
cat >lvm/lvm.conf <<EOF
# No udev inside UML; LVM creates the /dev nodes itself.
devices {
	obtain_device_list_from_udev = 0
	external_device_info_source = "none"
	use_devicesfile = 0
}
activation {
	udev_sync = 0
	udev_rules = 0
	monitoring = 0
}
global {
	use_lvmpolld = 0
}
backup {
	backup_dir = "$WORK/lvm/backup"
	archive_dir = "$WORK/lvm/archive"
}
EOF

# ---- (a) host side: the image, and what it must read as in the end.
qemu-img create -q -f qcow2 img.qcow2 128M
qemu-io -c "write -P 0x11 0 1M" -c "write -P 0x22 5M 3M" -c "write -c -P 0x33 20M 64k" \
	-c "write -P 0x44 30M 512k" img.qcow2 >/dev/null
qemu-img snapshot -c s1 img.qcow2
qemu-img convert -O raw img.qcow2 snap.raw
qemu-io -c "write -P 0x55 7M 2M" -c "write -z 30M 64k" -c "write -P 0x66 100M 64k" img.qcow2 >/dev/null
qemu-img check -q img.qcow2 || fail "img.qcow2 invalid before the test"
qemu-img convert -O raw img.qcow2 a.expected
python3 - <<'PY'
import random
r = random.Random(35)
for name, n in (("w1", 3 << 20), ("w2", 1 << 20), ("w3", 7 << 10), ("pat", 8 << 20)):
    open(name + ".bin", "wb").write(r.randbytes(n))
PY
# The writes done through the target in UML, applied to the expectation.
put() { dd if="$1" of=a.expected bs=512 seek="$2" conv=notrunc status=none; }
put w1.bin $(( (2 * MiB - 4096) / 512 ))	# O_DIRECT, across clusters, over snapshot data
put w2.bin $(( 20 * MiB / 512 ))		# buffered, over the compressed cluster
put w3.bin $(( (5 * MiB + 512) / 512 ))		# unaligned 7 KiB into shared clusters
dd if=/dev/zero of=a.expected bs=64k seek=$((6 * 16)) count=16 conv=notrunc status=none  # discard
truncate -s 256M pv.img
A_SECTORS=$(sectors img.qcow2)
log "(a) image: $(stat -c %s img.qcow2) bytes, $A_SECTORS sectors"

# ---- (c) host side: an empty image for the nested case.
qemu-img create -q -f qcow2 nest.qcow2 64M
N_SECTORS=$(sectors nest.qcow2)

# ---- (b) host side: the image that becomes a PV, and the files for ext4.
qemu-img create -q -f qcow2 pvimg.qcow2 256M
truncate -s 160M pvimg.qcow2
B_SECTORS=$(sectors pvimg.qcow2)
mkdir files
python3 - files <<'PY'
import os, random, sys
r = random.Random(351)
for i in range(60):
    d = os.path.join(sys.argv[1], "dir%d" % (i % 6))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "file%02d" % i), "wb") as f:
        f.write(r.randbytes(r.choice([1, 3000, 4096, 65536, 200000, 1500000])))
PY
(cd files && find . -type f -print0 | sort -z | xargs -0 sha256sum) >files.sha256
log "(b) $(du -sh files | cut -f1) of files, $(wc -l <files.sha256) files"

cat >common.sh <<EOF
set -u
export LVM_SYSTEM_DIR=$WORK/lvm LVM_SUPPRESS_FD_WARNINGS=1
MiB=$MiB WORK=$WORK A_SECTORS=$A_SECTORS B_SECTORS=$B_SECTORS N_SECTORS=$N_SECTORS
EOF
cat >>common.sh <<'EOF'
rc=0
bad() { echo "FAIL: $*"; rc=1; }
die() { echo "FAIL: $*"; dmesg | grep -i qcow2dedup | tail -n 20; exit 1; }
mode() { dmsetup status "$1" | awk '{ print $4 }'; }
# Hide the PV on /dev/ubda (the raw copy) from LVM.
NOUBDA=(--config 'devices { global_filter = [ "r|^/dev/ubda$|" ] }')
EOF

cat >boot1.sh <<'EOF'
source ./common.sh
echo "== (a) image on an LV"
pvcreate -q /dev/ubda || die "pvcreate ubda"
vgcreate -q vgq /dev/ubda || die "vgcreate vgq"
lvcreate -q -y -n img -L 64M vgq || die "lvcreate vgq/img"
dd if=img.qcow2 of=/dev/vgq/img bs=1M conv=fsync status=none || die "dd image into the LV"
qemu-img info /dev/vgq/img | grep -q 'file format: qcow2' || bad "qemu-img does not see qcow2 on the LV"
dmsetup create qa --table "0 $A_SECTORS qcow2dedup /dev/vgq/img" || die "create qa"
dmsetup table qa
dd if=w1.bin of=/dev/mapper/qa bs=4k seek=$(( (2 * MiB - 4096) / 4096 )) oflag=direct conv=fsync status=none || bad "w1"
dd if=w2.bin of=/dev/mapper/qa bs=64k seek=$(( 20 * 16 )) conv=fsync status=none || bad "w2"
dd if=w3.bin of=/dev/mapper/qa bs=512 seek=$(( (5 * MiB + 512) / 512 )) oflag=direct conv=fsync status=none || bad "w3"
blkdiscard -o $((6 * MiB)) -l $MiB /dev/mapper/qa || bad "discard"
echo "qa: $(dmsetup status qa)"
[ "$(mode qa)" = write ] || bad "qa mode $(mode qa)"
cmp /dev/mapper/qa a.expected || bad "qa differs from the expected disk"
dmsetup remove qa || die "remove qa"
dmsetup create qa --readonly --table "0 $A_SECTORS qcow2dedup /dev/vgq/img" || die "create qa again"
cmp /dev/mapper/qa a.expected || bad "qa differs from the expected disk after reactivation"
dmsetup remove qa || die "remove qa (2)"
dd if=/dev/vgq/img of=lv-out.qcow2 bs=1M status=none || die "dd the LV out"

echo "== (c) both at once: a PV on the target, whose image is on an LV"
# scan_lvs = 0 (the default) hides PVs on LVs, not PVs on a dm device that
# merely sits on an LV.
lvcreate -q -y -n nest -L 32M vgq || die "lvcreate vgq/nest"
dd if=nest.qcow2 of=/dev/vgq/nest bs=1M conv=fsync status=none || die "dd nest.qcow2 into the LV"
dmsetup create qn --table "0 $N_SECTORS qcow2dedup /dev/vgq/nest" || die "create qn"
pvcreate -q /dev/mapper/qn && vgcreate -q vgn /dev/mapper/qn && lvcreate -q -y -n lv -L 8M vgn ||
	bad "LVM on qn"
dd if=pat.bin of=/dev/vgn/lv bs=1M oflag=direct conv=fsync status=none || bad "dd to vgn/lv"
pvs --noheadings -o pv_name,vg_name | grep -q '/dev/mapper/qn *vgn' || bad "no vgn on /dev/mapper/qn"
vgchange -q -an vgn || bad "vgchange -an vgn"
dmsetup remove qn || die "remove qn"
vgchange -q -ay vgn 2>/dev/null && bad "vgn still activates without its target"
dd if=/dev/vgq/nest of=nest-out.qcow2 bs=1M status=none || die "dd vgq/nest out"
vgchange -q -an vgq || bad "vgchange -an vgq"

echo "== (b) PV on the target"
dmsetup create qb --table "0 $B_SECTORS qcow2dedup /dev/ubdb" || die "create qb"
pvcreate -q /dev/mapper/qb || die "pvcreate qb"
vgcreate -q vgb /dev/mapper/qb || die "vgcreate vgb"
lvcreate -q -y -n data -L 128M vgb || die "lvcreate vgb/data"
lvcreate -q -y -n blob -L 16M vgb || die "lvcreate vgb/blob"
pvs; lvs
mkfs.ext4 -q /dev/vgb/data || die "mkfs on vgb/data"
mkdir -p mnt
mount /dev/vgb/data mnt || die "mount vgb/data"
cp -a files/. mnt/ || bad "cp files"
(cd mnt && sha256sum -c --quiet ../files.sha256) || bad "files differ on vgb/data"
umount mnt || die "umount"
fsck.ext4 -fn /dev/vgb/data >fsck.out 2>&1 || { cat fsck.out; bad "fsck vgb/data"; }
dd if=pat.bin of=/dev/vgb/blob bs=1M oflag=direct conv=fsync status=none || bad "dd pattern to vgb/blob"

# What LVM needs to ignore, or to use, a PV on a qcow2dedup device.
pvs --noheadings -o pv_name,vg_name | grep -q '/dev/mapper/qb *vgb' || bad "default scan: no vgb on /dev/mapper/qb"
pvs --noheadings -o pv_name,vg_name --config 'devices { global_filter = [ "r|^/dev/mapper/qb$|" ] }' |
	grep -q vgb && bad "global_filter r|^/dev/mapper/qb$| does not hide vgb"
DF=(--config 'devices { use_devicesfile = 1 }')
lvm lvmdevices -q -y "${DF[@]}" --adddev /dev/ubda || bad "lvmdevices --adddev /dev/ubda"
pvs --noheadings -o pv_name,vg_name "${DF[@]}" | grep -q vgb && bad "devices file without qb: vgb visible"
lvm lvmdevices -q -y "${DF[@]}" --adddev /dev/mapper/qb || bad "lvmdevices --adddev /dev/mapper/qb"
cat "$LVM_SYSTEM_DIR/devices/system.devices"
pvs --noheadings -o pv_name,vg_name "${DF[@]}" | grep -q '/dev/mapper/qb *vgb' || bad "devices file with qb: no vgb"
rm -f "$LVM_SYSTEM_DIR/devices/system.devices"

vgchange -q -an vgb || bad "vgchange -an vgb"
echo "qb: $(dmsetup status qb)"
[ "$(mode qb)" = write ] || bad "qb mode $(mode qb)"
dmsetup remove qb || die "remove qb"
[ -z "$(dmsetup ls | grep -v 'No devices found')" ] || { dmsetup ls; bad "devices left"; }
echo boot1-done
exit $rc
EOF

cat >boot2.sh <<'EOF'
source ./common.sh
check_vgb() { # WHERE [lvm options]
	local where=$1; shift
	vgchange -q -ay "$@" vgb || { bad "$where: vgchange -ay vgb"; return; }
	lvs "$@" vgb
	fsck.ext4 -fn /dev/vgb/data >fsck.out 2>&1 || { cat fsck.out; bad "$where: fsck vgb/data"; }
	mkdir -p mnt
	if mount -o ro /dev/vgb/data mnt; then
		(cd mnt && sha256sum -c --quiet ../files.sha256) || bad "$where: files differ"
		umount mnt
	else
		bad "$where: mount vgb/data"
	fi
	cmp -n $((8 * MiB)) /dev/vgb/blob pat.bin || bad "$where: vgb/blob differs"
	vgchange -q -an "$@" vgb || bad "$where: vgchange -an vgb"
}
echo "== the raw export"
pvs
pvs --noheadings -o pv_name,vg_name | grep -q '/dev/ubda *vgb' || bad "no vgb on the raw export"
pvs --noheadings -o pv_name | grep -q ubdb && bad "LVM sees a PV in the qcow2 container itself"
check_vgb raw
echo "== the qcow2 image through the target, read-only"
dmsetup create qb --readonly --table "0 $B_SECTORS qcow2dedup /dev/ubdb" || die "create qb"
pvs "${NOUBDA[@]}"
pvs --noheadings -o pv_name,vg_name "${NOUBDA[@]}" | grep -q '/dev/mapper/qb *vgb' || bad "no vgb on /dev/mapper/qb"
check_vgb target "${NOUBDA[@]}"
dmsetup remove qb || bad "remove qb"
echo boot2-done
exit $rc
EOF

start=$(date +%s)
uml -m 768M -d pv.img -d pvimg.qcow2 -- bash boot1.sh || fail "UML boot 1"
log "boot 1: $(( $(date +%s) - start ))s"

# (a) on the host: the LV's copy.
qcheck lv-out.qcow2
qemu-img convert -O raw lv-out.qcow2 a.raw
cmp a.raw a.expected || fail "(a) the LV copy does not export the expected disk"
qemu-img convert -l snapshot.name=s1 -O raw lv-out.qcow2 a-snap.raw
cmp a-snap.raw snap.raw || fail "(a) snapshot s1 changed"
log "(a) LV copy: qemu-img check clean, disk and snapshot as expected"

# (c) on the host: the nested image holds the PV and the pattern.
qcheck nest-out.qcow2
qemu-img convert -O raw nest-out.qcow2 nest.raw
python3 - nest.raw pat.bin <<'PY' || fail "(c) the nested image lacks the LVM label or the pattern"
import sys
d, pat = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
sys.exit(0 if d[512:520] == b"LABELONE" and pat[:8 << 20] in d else 1)
PY
log "(c) nested image: qemu-img check clean, LVM label and LV data inside"

# (b) on the host.
qcheck pvimg.qcow2
qemu-img convert -O raw pvimg.qcow2 pv.raw
python3 - pv.raw <<'PY' || fail "(b) no LVM label in the raw export"
import sys
d = open(sys.argv[1], "rb").read(4096)
sys.exit(0 if d[512:520] == b"LABELONE" and d[536:544] == b"LVM2 001" else 1)
PY
log "(b) qemu-img check clean, LVM label at sector 1 of the raw export"

start=$(date +%s)
uml -m 768M -d pv.raw -d pvimg.qcow2 -- bash boot2.sh || fail "UML boot 2"
log "boot 2: $(( $(date +%s) - start ))s"
