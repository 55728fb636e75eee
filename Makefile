# SPDX-License-Identifier: GPL-2.0
#
# dm-qcow2dedup: build, test and demo entry points.  See README.md.
#
#   make            build dm-qcow2dedup.ko against Debian's 6.12 headers (KDIR=...)
#   make module-6.1 the same for Debian 12's default 6.1 kernel (in the cache)
#   make deb        the Debian packages qcow2dedup-dkms and qcow2dedup (in the cache)
#                   and the userspace tool tools/qcow2dedup/qcow2dedup
#   make install    install the module, the tool and its man page (DESTDIR=...)
#   make deps       install (apt) everything the build, tests and demo need
#   make check      static checks, module build, KUnit, e2e in UML, stock-kernel smoke,
#                   KUnit and e2e-smp in the SMP x86_64 kernel
#   make demo       the main job on a generated image, in UML
#   make bench      fio table vs dm-linear/dm-thin/qemu-nbd/dm-vdo, hash bound (not part of check)
#   make bench-vm   write rows in the stock 6.12 kernel under qemu, -smp 1 vs 2 (not part of check)
#   make fuzz       mutation campaign in UML (FUZZ_N, FUZZ_SEED, FUZZ_JOBS; not part of check)
#   make kunit-x86  KUnit in the SMP x86_64 debug kernel under qemu (2 vCPUs)
#   make e2e-smp    the E2E_SMP scenarios in that kernel through tools/testing/x86-run
#
# Kernel outputs live in a cache outside the clone (QCOW2DEDUP_CACHE).

QCOW2DEDUP_CACHE ?= /var/tmp/qcow2dedup
export QCOW2DEDUP_CACHE

KVER_DEB  ?= $(lastword $(sort $(notdir $(wildcard /usr/src/linux-headers-6.12.*-amd64))))
KDIR      ?= $(if $(KVER_DEB),/usr/src/$(KVER_DEB),/lib/modules/$(shell uname -r)/build)
MODDIR    := $(CURDIR)
# Debian 12's default kernel, 6.1 (linux-headers-amd64).  Its objects are
# built in a copy of the sources in the cache, so that one tree builds for
# both kernels (kbuild's out-of-tree M= builds write next to the sources).
KVER_61   ?= $(notdir $(shell ls -d /usr/src/linux-headers-6.1.*-amd64 2>/dev/null | sort -V | tail -n 1))
KDIR_61   ?= /usr/src/$(KVER_61)
MODDIR_61 := $(QCOW2DEDUP_CACHE)/module-6.1
KO        := drivers/md/dm-qcow2dedup/dm-qcow2dedup.ko
UML_BUILD := $(QCOW2DEDUP_CACHE)/build-uml
KUNITCFG  := --kunitconfig=$(CURDIR)/drivers/md/dm-qcow2dedup/.kunitconfig \
	     --kunitconfig=$(CURDIR)/tools/testing/uml/uml.config
JOBS      ?= $(shell nproc)
# Cases marked very slow are measurements (the hash bound of make bench),
# not tests; slow ones (fuzz_slow) run.
KUNIT_FILTER := --filter "speed>very_slow"
X86_BUILD := $(QCOW2DEDUP_CACHE)/build-x86
X86CFG    := --kunitconfig=$(CURDIR)/drivers/md/dm-qcow2dedup/.kunitconfig \
	     --kunitconfig=$(CURDIR)/tools/testing/x86/x86.config
# As tools/testing/x86-run: KVM when a guest really runs under it (a probe:
# tools/testing/x86-accel), else TCG with a thread per vCPU.
X86_ACCEL ?= $(shell tools/testing/x86-accel)
# The scenarios make e2e-smp (and so make check) runs, a run-all pattern:
# 54-smp-stress runs every concurrent path at once (writers and readers of
# identical and different data, discards, write-zeroes, suspend/resume/
# reload, flush and rebuild messages, power cuts).  E2E_SMP_MORE: other
# scenarios with concurrency, not in check (each boots the kernel several
# times under TCG, a minute each; results in tools/testing/x86/NOTES.md),
# 67-read-miss-async: the read workqueue's items beside the worker (and
# compressed reads beside read-modify-writes of the same clusters), 4 min.
# 59-read-runs: rows of clusters read while their mappings change and
# their clusters are freed and reused: the per-CPU reader generations
# (io-readers.c) against the commits that wait for them.
# 68-zeroes-in-place: write-zeroes' zero writes ending on any CPU while
# their clusters are freed and reused, 3 min.
# 69-alloc-runs: runs of new clusters under nodedup, allocated by the
# worker while map() looks up the next bios on the other CPU and while
# the other loop's freed clusters are reused.
E2E_SMP   ?= /(54-smp-stress|67-read-miss-async|59-read-runs|68-zeroes-in-place|69-alloc-runs)\.sh$$
E2E_SMP_MORE := /(30-write-mixed|38-reload|40-dedup|42-dedup-fio|43-dedup-snapshot|49-dedup-write-zeroes|50-memory-pressure|52-dedup-collision|63-verify-async|66-rmw-async|70-dedup-write-merge)\.sh$$

.PHONY: all module module-6.1 deb tool deps uml kunit e2e smoke static checkpatch sparse layers check demo bench bench-vm bench-dd fuzz \
	x86 kunit-x86 e2e-smp print-e2e-smp print-ko-6.1 print-kver print-kver-6.1 install install-tool clean help

all: module tool

help:
	@sed -n '3,19s/^# \{0,1\}//p' Makefile

module: | need-headers
	$(MAKE) -C $(KDIR) M=$(MODDIR) CONFIG_DM_QCOW2DEDUP=m W=1 modules

# The same sources for 6.1: $(MODDIR_61)/$(KO).  rsync keeps the copy's
# objects (excluded on both sides) and mtimes, so rebuilds are incremental.
module-6.1:
	@test -n "$(KVER_61)" && test -f $(KDIR_61)/Makefile || { echo "No 6.1 kernel headers: apt-get install -y linux-headers-amd64 (or: make deps)"; exit 1; }
	mkdir -p $(MODDIR_61)
	rsync -a --delete --exclude='*.o' --exclude='*.ko' --exclude='*.mod' --exclude='*.mod.c' \
		--exclude='.*.cmd' --exclude='*.order' --exclude='Module.symvers' --exclude='*.ur-safe' \
		Kbuild Kconfig drivers include $(MODDIR_61)/
	$(MAKE) -C $(KDIR_61) M=$(MODDIR_61) CONFIG_DM_QCOW2DEDUP=m W=1 modules

# Debian packages qcow2dedup-dkms and qcow2dedup (debian/), built from a copy
# of the working tree in $(DEB_DIR), where the .debs land.
DEB_DIR := $(QCOW2DEDUP_CACHE)/deb
deb:
	@command -v dpkg-buildpackage >/dev/null && command -v dh_dkms >/dev/null || \
		{ echo "make deb needs: apt-get install -y dpkg-dev debhelper dh-dkms (or: make deps)"; exit 1; }
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	rsync -a --exclude=.git --exclude='*.o' --exclude='*.ko' --exclude='*.mod' --exclude='*.mod.c' \
		--exclude='.*.cmd' --exclude='*.order' --exclude='Module.symvers' --exclude='*.ur-safe' \
		--exclude=/tools/qcow2dedup/qcow2dedup ./ $(DEB_DIR)/src/
	cd $(DEB_DIR)/src && dpkg-buildpackage -us -uc -b
	@ls $(DEB_DIR)/*.deb

# Userspace: qcow2dedup table/info/check (tools/qcow2dedup/qcow2dedup.8).
tool:
	$(MAKE) -C tools/qcow2dedup

need-headers:
	@test -f $(KDIR)/Makefile || { echo "No kernel headers at $(KDIR): apt-get install -y linux-headers-6.12-amd64 (or: make deps)"; exit 1; }

deps:
	tools/testing/deps

uml:
	tools/testing/uml-build

kunit: uml
	cd "$$(tools/testing/kernel-tree)" && python3 tools/testing/kunit/kunit.py run \
		--build_dir=$(UML_BUILD) $(KUNITCFG) --jobs=$(JOBS) $(KUNIT_FILTER)

e2e: uml
	tools/testing/e2e/run-all

# The SMP x86_64 debug kernel (tools/testing/x86/x86.config: 2 vCPUs,
# PREEMPT, lockdep, KASAN, kmemleak) in $(X86_BUILD); see
# tools/testing/x86/NOTES.md.
x86:
	tools/testing/x86-build

# kunit.py boots it with qemu -m 1024; TCG with KASAN is slow, hence the timeout.
kunit-x86: x86
	@command -v qemu-system-x86_64 >/dev/null || { echo "kunit-x86 needs qemu-system-x86_64: apt-get install -y qemu-system-x86"; exit 1; }
	cd "$$(tools/testing/kernel-tree)" && python3 tools/testing/kunit/kunit.py run --arch=x86_64 \
		--build_dir=$(X86_BUILD) $(X86CFG) --jobs=$(JOBS) --timeout=3600 $(KUNIT_FILTER) \
		--qemu_args='-smp 2' --qemu_args='-accel $(X86_ACCEL)'

# Logs in $(QCOW2DEDUP_CACHE)/e2e-smp, apart from make e2e's.
# make e2e-smp E2E_SMP='$(E2E_SMP_MORE)' runs the others.
e2e-smp: x86
	RUNNER=x86-run E2E_LOGS=$(QCOW2DEDUP_CACHE)/e2e-smp tools/testing/e2e/run-all '$(E2E_SMP)'

# For tools/testing/check and package-test: the 6.1 module's path, the
# releases of the two kernels built for.
print-ko-6.1:
	@echo '$(MODDIR_61)/$(KO)'
print-kver:
	@echo '$(KVER_DEB:linux-headers-%=%)'
print-kver-6.1:
	@echo '$(KVER_61:linux-headers-%=%)'

# For tools/testing/check, which runs e2e-smp without its build step.
print-e2e-smp:
	@echo '$(E2E_SMP)'

# The read and write scenarios in both of Debian 12's kernels, each with the
# module built for it (its vermagic picks the kernel the smoke test boots).
smoke: module module-6.1
	tools/testing/smoke/check-read $(MODDIR)/$(KO)
	tools/testing/smoke/check-write $(MODDIR)/$(KO)
	tools/testing/smoke/check-read $(MODDIR_61)/$(KO)
	tools/testing/smoke/check-write $(MODDIR_61)/$(KO)

# In the kernel tree, as upstream review runs it (kernel API names are known there).
# The compat header exists only out of tree and is all version tests: the
# two checks that say "no version tests" are off for it alone.
checkpatch:
	@src=$$(tools/testing/kernel-tree) && cd $$src && \
	scripts/checkpatch.pl --strict --terse --show-types -f \
		--ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON drivers/md/dm-qcow2dedup/dm-qcow2dedup-compat.h && \
	scripts/checkpatch.pl --strict --terse --show-types -f \
		$(addprefix drivers/md/dm-qcow2dedup/,$(notdir $(filter-out %.mod.c %-compat.h,$(wildcard drivers/md/dm-qcow2dedup/*.[ch])))) \
		$(addprefix drivers/md/dm-qcow2dedup/tests/,$(notdir $(wildcard drivers/md/dm-qcow2dedup/tests/*.[ch]))) \
		$(addprefix include/uapi/qcow2dedup/,$(notdir $(wildcard include/uapi/qcow2dedup/*.h)))

sparse: | need-headers
	$(MAKE) -C $(KDIR) M=$(MODDIR) CONFIG_DM_QCOW2DEDUP=m C=2 W=1 modules 2>&1 | tee $(QCOW2DEDUP_CACHE)/sparse.log
	@! grep -E 'warning|error' $(QCOW2DEDUP_CACHE)/sparse.log

# The target's files call one way, from the dm glue down to the format.
layers:
	tools/testing/layers

static: checkpatch sparse layers

check:
	tools/testing/check

demo:
	tools/demo

# The benchmark table against dm-linear, dm-thin, qemu-nbd and (with
# vdoformat on PATH) dm-vdo, fio workloads at 4 KiB and 64 KiB clusters,
# the in-kernel hash bound (tools/testing/bench/suite; BENCH_ARGS passes
# options), then the dedup table's costs; in a UML kernel without debugging
# options (built on first use).  Prints numbers only.
bench: deps
	tools/testing/bench/suite $(BENCH_ARGS)
	tools/testing/bench/table-bench

# Does hashing scale with CPUs: sequential and random writes of dm-linear,
# nodedup and sha256 dedup in Debian's stock 6.12 kernel under qemu (TCG)
# with -smp 1 and -smp 2 (tools/testing/bench/vm; BENCH_VM_ARGS: MiB, boots).
bench-vm: module
	tools/testing/bench/vm $(BENCH_VM_ARGS)

# The older dd-only comparison (64 KiB clusters, dm-linear and the hashes).
bench-dd: deps
	tools/testing/bench/dedup-bench

# Mutation campaign against the target in UML: FUZZ_N images (10000) made
# from seed images by tools/testing/fuzz/qfuzz.py, FUZZ_SEED (random, printed),
# FUZZ_JOBS UML instances (1).  Failing images in $(QCOW2DEDUP_CACHE)/fuzz/failures;
# replay with tools/testing/fuzz/run --replay FILE...
fuzz: uml
	tools/testing/fuzz/run

install: module install-tool
	$(MAKE) -C $(KDIR) M=$(MODDIR) CONFIG_DM_QCOW2DEDUP=m modules_install

# $(DESTDIR)/usr/local/sbin/qcow2dedup and its man page in section 8.
install-tool: tool
	$(MAKE) -C tools/qcow2dedup install DESTDIR=$(DESTDIR) PREFIX=/usr/local

clean:
	-$(MAKE) -C $(KDIR) M=$(MODDIR) clean 2>/dev/null
	$(MAKE) -C tools/qcow2dedup clean
	rm -f drivers/md/dm-qcow2dedup/*.o.ur-safe
