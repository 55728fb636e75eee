# SPDX-License-Identifier: GPL-2.0
# Shared helpers for the end-to-end scenarios; sourced by each scenario.
#
# A scenario is an executable tools/testing/e2e/NN-name.sh run on the host.
# It prepares images with QEMU's tools, drives the target inside UML through
# tools/testing/uml-run and checks the result with tools nobody here wrote
# (qemu-img, qemu-io, cmp, fsck).  Exit 0 = pass, anything else = fail.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../../.." && pwd)
UML_RUN=$REPO/tools/testing/uml-run
CACHE=${QCOW2DEDUP_CACHE:-/var/tmp/qcow2dedup}
mkdir -p "$CACHE/e2e"
# Work directory of this scenario: visible inside UML through hostfs.
WORK=$(mktemp -d "$CACHE/e2e/$(basename "$0" .sh).XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { printf '# %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# pad IMAGE: round a qcow2 file up to a whole number of 64 KiB blocks, as it
# would be on a logical volume; a block device cannot end mid-cluster.
pad() { truncate -s %2097152 "$1"; }

# sectors IMAGE: virtual size in 512-byte sectors, from qemu-img.
sectors() {
	qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] // 512)'
}

# uml [uml-run options] -- CMD...: run in UML, with the scenario's output.
uml() { "$UML_RUN" "$@"; }
