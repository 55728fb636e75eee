#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Deterministic write workloads for the end-to-end scenarios.

Every operation list is a pure function of the command-line parameters, so
the writers inside UML and the replay on the host agree without exchanging
anything.  The data area is a list of windows of the virtual disk (16 KiB
aligned); three phases run one after the other:

  seq   one writer walks every window, writing runs of 512 B .. 1 MiB and
        skipping runs of the same sizes (so later phases find both
        allocated and unallocated clusters).
  rand  N concurrent writers; the area is cut into 16 KiB blocks owned
        round-robin, a writer writes 512 B .. 16 KiB inside its own blocks
        only: writers share clusters (and, at 4 KiB, cross them) but never
        bytes, nor pages of the page cache.
  over  N concurrent writers; the area is cut into 1.25 MiB chunks owned
        round-robin (not a multiple of any cluster size, so chunk borders
        share clusters), writes of 512 B .. 1 MiB inside the own chunk:
        in-place overwrites, allocations, boundary crossings.

Each operation is O_DIRECT, buffered or O_DIRECT|O_DSYNC (FUA), sometimes
followed by an fsync (a flush).  The data of operation i of writer w in
phase p is random.Random("seed:p:w:i").randbytes(len).

  wgen.py run    --dev DEV --phase P --writer W COMMON   write (in UML)
  wgen.py expect --out RAW COMMON                        replay into RAW
  wgen.py verify --dev DEV --expected RAW COMMON         O_DIRECT compare
  wgen.py who    --offset BYTE COMMON                    ops covering BYTE
  COMMON: --size BYTES --windows S:E[,S:E...] --writers N --seed S
          [--rand-ops N] [--over-ops N]
"""
import argparse
import mmap
import os
import random
import sys

BLOCK = 16384
CHUNK = 1310720
MAXIO = 1 << 20
SECTOR = 512


def windows_of(spec):
    wins = []
    for part in spec.split(","):
        s, e = (int(x, 0) for x in part.split(":"))
        if s % BLOCK or e % BLOCK or s >= e:
            raise SystemExit(f"window {part}: not 16 KiB aligned or empty")
        wins.append((s, e))
    return wins


def pick_mode(r):
    x = r.random()
    return "direct" if x < 0.45 else "buffered" if x < 0.9 else "dsync"


def seq_ops(a):
    r = random.Random(f"{a.seed}:seq")
    ops = []
    for s, e in windows_of(a.windows):
        off = s
        while off < e:
            n = min(SECTOR * r.randint(1, MAXIO // SECTOR), e - off)
            if r.random() < 0.6:
                ops.append((off, n, pick_mode(r), r.random() < 0.1))
            off += n
    return ops


def rand_ops(a, w):
    blocks = [b for s, e in windows_of(a.windows) for b in range(s, e, BLOCK)]
    own = blocks[w::a.writers]
    r = random.Random(f"{a.seed}:rand:{w}")
    ops = []
    for _ in range(a.rand_ops):
        b = r.choice(own)
        if r.random() < 0.2:
            start, n = 0, BLOCK
        else:
            start = SECTOR * r.randrange(BLOCK // SECTOR)
            n = SECTOR * r.randint(1, (BLOCK - start) // SECTOR)
        ops.append((b + start, n, pick_mode(r), r.random() < 0.05))
    return ops


def over_ops(a, w):
    chunks = [(c, min(c + CHUNK, e)) for s, e in windows_of(a.windows)
              for c in range(s, e, CHUNK)]
    own = chunks[w::a.writers]
    r = random.Random(f"{a.seed}:over:{w}")
    ops = []
    if not own:
        return ops
    for _ in range(a.over_ops):
        cs, ce = r.choice(own)
        if r.random() < 0.5:
            n = SECTOR * r.randint(1, 128)
        else:
            n = SECTOR * r.randint(128, MAXIO // SECTOR)
        n = min(n, ce - cs)
        start = cs + SECTOR * r.randrange((ce - cs - n) // SECTOR + 1)
        ops.append((start, n, pick_mode(r), r.random() < 0.1))
    return ops


def ops_of(a, phase, w):
    if phase == "seq":
        return seq_ops(a) if w == 0 else []
    if phase == "rand":
        return rand_ops(a, w)
    return over_ops(a, w)


def data_of(a, phase, w, i, n):
    return random.Random(f"{a.seed}:{phase}:{w}:{i}").randbytes(n)


PHASES = ("seq", "rand", "over")


def cmd_run(a):
    ops = ops_of(a, a.phase, a.writer)
    fd_b = os.open(a.dev, os.O_WRONLY)
    fd_d = os.open(a.dev, os.O_WRONLY | os.O_DIRECT)
    fd_s = os.open(a.dev, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
    buf = mmap.mmap(-1, MAXIO)
    view = memoryview(buf)
    nbytes = 0
    for i, (off, n, mode, sync) in enumerate(ops):
        data = data_of(a, a.phase, a.writer, i, n)
        try:
            if mode == "buffered":
                done = os.pwrite(fd_b, data, off)
            else:
                view[:n] = data
                done = os.pwrite(fd_d if mode == "direct" else fd_s, view[:n], off)
            if done != n:
                raise OSError(0, f"short write {done}")
            if sync:
                os.fsync(fd_b)
        except OSError as e:
            sys.exit(f"wgen: {a.phase} writer {a.writer} op {i} "
                     f"({mode} {off}+{n}): {e}")
        nbytes += n
    os.fsync(fd_b)
    os.fsync(fd_d)
    view.release()
    for fd in (fd_b, fd_d, fd_s):
        os.close(fd)
    print(f"{a.phase} writer {a.writer}: {len(ops)} ops, {nbytes} bytes")


def cmd_expect(a):
    with open(a.out, "wb") as f:
        f.truncate(a.size)
        for phase in PHASES:
            for w in range(a.writers):
                for i, (off, n, _, _) in enumerate(ops_of(a, phase, w)):
                    f.seek(off)
                    f.write(data_of(a, phase, w, i, n))


def cmd_verify(a):
    """Compare the windows (and the rest, in steps, where --full) with RAW."""
    fd = os.open(a.dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MAXIO)
    bad = 0
    ranges = [(0, a.size)] if a.full else windows_of(a.windows)
    with open(a.expected, "rb") as f:
        for s, e in ranges:
            off = s
            while off < e:
                n = min(MAXIO, e - off)
                got = os.preadv(fd, [memoryview(buf)[:n]], off)
                f.seek(off)
                want = f.read(n)
                if got != n or buf[:n] != want:
                    first = next((k for k in range(n) if buf[k] != want[k]), None)
                    print(f"verify: {a.dev}: mismatch in [{off}, {off + n}), "
                          f"first byte {off + first if first is not None else '?'}"
                          f" (read {got})")
                    bad += 1
                    if bad > 8:
                        sys.exit(1)
                off += n
    os.close(fd)
    if bad:
        sys.exit(1)
    print(f"verify: {a.dev}: {sum(e - s for s, e in ranges)} bytes as expected")


def cmd_who(a):
    for phase in PHASES:
        for w in range(a.writers):
            for i, (off, n, mode, sync) in enumerate(ops_of(a, phase, w)):
                if off <= a.offset < off + n:
                    print(f"{phase} writer {w} op {i}: {mode} {off}+{n}"
                          f"{' fsync' if sync else ''}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=("run", "expect", "verify", "who"))
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--windows", required=True)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--seed", default="1")
    p.add_argument("--rand-ops", type=int, default=300)
    p.add_argument("--over-ops", type=int, default=30)
    p.add_argument("--dev")
    p.add_argument("--phase", choices=PHASES)
    p.add_argument("--writer", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--expected")
    p.add_argument("--full", action="store_true")
    p.add_argument("--offset", type=int)
    a = p.parse_args()
    {"run": cmd_run, "expect": cmd_expect, "verify": cmd_verify, "who": cmd_who}[a.cmd](a)


if __name__ == "__main__":
    main()
