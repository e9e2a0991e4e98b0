#!/usr/bin/env bash
# Self-test of the HIL harness: the kernel-log checker on samples (no QEMU), then three guest
# boots with dmar-probe (a static C program, built here) on the real VFIO + VT-d path:
#   ok                     IDENTIFY into mapped memory     -> exit 0, kernel log clean
#   fault                  IDENTIFY to an unmapped IOVA    -> exit 5 (DMAR fault found)
#   fault --expect-dmar    the same, fault required        -> exit 0
# Usage: tests/hil/selftest.sh [OUTDIR]  (default target/hil/selftest). Exit 0 when all hold;
# 3 when QEMU cannot run here (as `hil.sh check`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
hil=$here/hil.sh
out=${1:-$repo/target/hil/selftest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

"$here/test-check-log.sh"

"$hil" check || exit $?

probe=$out/dmar-probe
gcc -static -O2 -Wall -Wextra -Werror -o "$probe" "$here/dmar-probe.c"

failures=0
# boot NAME WANT_RC MODE [hil run options]: one guest run of dmar-probe MODE.
boot() {
	local name=$1 want=$2 mode=$3 rc=0
	shift 3
	cat >"$out/$name.sh" <<SCRIPT
set -e
bind_vfio "\$NVME_BDF"
./dmar-probe $mode "\$NVME_BDF" SCSTACCEL1
SCRIPT
	"$hil" run --out "$out/$name" --timeout 120 --bin "$probe" "$@" -- "$out/$name.sh" || rc=$?
	if [[ $rc -eq $want ]]; then
		echo "selftest: ok   $name -> exit $rc"
	else
		echo "selftest: FAIL $name -> exit $rc, want $want (see $out/$name)"
		failures=$((failures + 1))
	fi
}

boot probe-ok 0 ok
boot probe-fault 5 fault
boot probe-fault-expected 0 fault --expect-dmar

if [[ $failures -ne 0 ]]; then
	echo "selftest: $failures failure(s)"
	exit 1
fi
echo "selftest: all passed"
