#!/usr/bin/env bash
# Self-test of the HIL harness: the kernel-log checker on samples (no QEMU), then three guest
# boots with dmar-probe (a static C program, built here) on the real VFIO + VT-d path:
#   ok                     IDENTIFY into mapped memory     -> exit 0, kernel log clean
#   fault                  IDENTIFY to an unmapped IOVA    -> exit 5 (DMAR fault found)
#   fault --expect-dmar    the same, fault required        -> exit 0
# and one boot of the hal crate's VFIO unit tests on the guest's controller (hal-vfio: the
# real-device test must run, not skip: BAR0, MSI-X, config space, the reset, DMA map/unmap,
# the exact-unmap rule against the real type1 v2 driver, and bus mastering cleared while Memory
# Space Enable is cleared under the driver).
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

# The hal crate's unit-test executable (`cargo test` in CI has usually built it already).
hal_test=$(cd "$repo" && cargo test --locked -p scst-accel-hal --lib --no-run --message-format=json |
	python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "scst_accel_hal" and m.get("executable"):
        print(m["executable"])')
cat >"$out/hal-vfio.sh" <<'SCRIPT'
set -e
bind_vfio "$NVME_BDF"
bin=$(ls "$HIL_SHARE"/scst_accel_hal-* | head -n1)
# A test that skips passes for libtest (the reason goes to captured stderr), so the skips are
# logged (hal::skip) and the real-device test must not be among them.
skips=$HIL_SHARE/hal-vfio.skips
SCST_ACCEL_SKIP_LOG=$skips SCST_ACCEL_VFIO_DEVICE=$NVME_BDF "$bin" --test-threads=1 vfio \
	>"$HIL_SHARE/hal-vfio.out" 2>&1 || { cat "$HIL_SHARE/hal-vfio.out"; exit 1; }
cat "$HIL_SHARE/hal-vfio.out"
grep -q "open_a_real_device_when_there_is_one \.\.\. ok$" "$HIL_SHARE/hal-vfio.out" ||
	{ echo "hal-vfio: the real-device test did not pass"; exit 1; }
if grep "open_a_real_device_when_there_is_one" "$skips" 2>/dev/null; then
	echo "hal-vfio: the real-device test skipped (above) instead of running"
	exit 1
fi
SCRIPT
rc=0
"$hil" run --out "$out/hal-vfio" --timeout 300 --bin "$hal_test" -- "$out/hal-vfio.sh" || rc=$?
if [[ $rc -eq 0 ]]; then
	echo "selftest: ok   hal-vfio -> exit 0"
else
	echo "selftest: FAIL hal-vfio -> exit $rc, want 0 (see $out/hal-vfio/serial.log)"
	failures=$((failures + 1))
fi

if [[ $failures -ne 0 ]]; then
	echo "selftest: $failures failure(s)"
	exit 1
fi
echo "selftest: all passed"
