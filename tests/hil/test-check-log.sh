#!/usr/bin/env bash
# Unit test of `hil.sh check-log` (the guest kernel-log checker) on the samples in testdata/:
# each case states the exit code and a line the report must show. Needs no QEMU.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hil=$here/hil.sh
d=$here/testdata
failures=0

# expect WANT_RC NEEDLE -- ARGS...: run check-log ARGS, compare its rc and look for NEEDLE.
expect() {
	local want=$1 needle=$2 rc=0 out
	shift 3
	out=$("$hil" check-log "$@" 2>&1) || rc=$?
	if [[ $rc -ne $want ]]; then
		echo "FAIL check-log $*: exit $rc, want $want"$'\n'"$out"
		failures=$((failures + 1))
	elif ! grep -qF -- "$needle" <<<"$out"; then
		echo "FAIL check-log $*: output lacks '$needle'"$'\n'"$out"
		failures=$((failures + 1))
	else
		echo "ok   check-log $* -> $rc"
	fi
}

expect 0 "kernel log: clean" -- "$d/clean.log"
expect 5 "fault addr 0xdead0000" -- "$d/dmar-fault.log"
expect 5 "DMAR: DRHD: handling fault status reg 2" -- "$d/dmar-fault.log"
expect 5 "PTE Read access is not set" -- "$d/dmar-fault-read.log"
expect 5 "drivers/vfio/vfio_iommu_type1.c" -- "$d/vfio-warning.log"
expect 5 "BUG: kernel NULL pointer dereference" -- "$d/oops.log"
expect 5 "Oops: 0000" -- "$d/oops.log"
expect 5 "Kernel panic - not syncing" -- "$d/panic.log"
# QEMU's VT-d model on the host side (qemu.stderr) counts as a DMAR fault too.
expect 5 "detected translation failure (dev=00:01:00, iova=0xdead0000)" -- "$d/qemu-vtd-fault.log"
# A line present in two files (console and dmesg) is reported once.
n=$("$hil" check-log "$d/dmar-fault.log" "$d/dmar-fault.log" | grep -c "handling fault status reg 2" || true)
if [[ $n -eq 1 ]]; then
	echo "ok   check-log reports a line found in two files once"
else
	echo "FAIL check-log reported a line found in two files $n times, want 1"
	failures=$((failures + 1))
fi
# A clean log plus a faulty one still fails: every file is read.
expect 5 "fault addr 0xdead0000" -- "$d/clean.log" "$d/dmar-fault.log"
# --expect-dmar: a fault is required, and other bad lines still fail the check.
expect 0 "expected DMAR fault(s) seen: 2 line(s)" -- --expect-dmar "$d/dmar-fault.log"
expect 5 "a DMAR fault was expected" -- --expect-dmar "$d/clean.log"
expect 5 "BUG: kernel NULL pointer dereference" -- --expect-dmar "$d/dmar-fault.log" "$d/oops.log"
# Misuse is a usage error, not a verdict.
expect 2 "cannot read" -- "$d/no-such.log"

if [[ $failures -ne 0 ]]; then
	echo "test-check-log: $failures failure(s)"
	exit 1
fi
echo "test-check-log: all passed"
