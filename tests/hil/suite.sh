#!/usr/bin/env bash
# The HIL suite (issue 5 §3): each scenario boots a fresh QEMU guest (q35 + intel-iommu + NVMe
# under TCG), binds the controller to vfio-pci and runs scst-accel on it; hil.sh checks the guest
# kernel log (no DMAR fault, no VFIO warning, no oops) and check-result.py the demo's JSON.
#
#   tests/hil/suite.sh [--bin PATH] [SCENARIO...]     (default: every scenario)
#
# Without --bin it builds the release binary. Exits 0 when every scenario passed, 1 otherwise;
# when QEMU cannot run here at all it says why and exits 0 with SKIPPED (the only skip).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=""
if [[ ${1:-} == --bin ]]; then
	bin=$2
	shift 2
fi
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(workload teardown reset restart tcmu tcmu-reset unbind xcopy iscsi power-cut power-cut-fs power-cut-vfio power-cut-vfio-4k)

if ! why=$("$here/hil.sh" check 2>&1); then
	echo "hil suite: SKIPPED: QEMU cannot run here: $why"
	exit 0
fi
if [[ -z $bin ]]; then
	(cd "$root" && cargo build --release --locked -p scst-accel)
	bin="${CARGO_TARGET_DIR:-$root/target}/release/scst-accel"
fi
# sg3-utils' tools go into the guest when the host has them (hil.sh install adds them); the tcmu
# scenario says SKIPPED for its SCSI checks otherwise.
sg_bins=()
for tool in sg_inq sg_vpd sg_readcap sg_reset; do
	if path=$(command -v "$tool"); then
		sg_bins+=(--bin "$path")
	fi
done
# libiscsi's conformance suite for the iscsi scenario (hil.sh install adds libiscsi-bin; the
# scenario fails, saying so, without it). Staged only for that scenario: its libraries are
# about 1 MB, but every guest would load them over 9p for nothing.
iscsi_bins=()
if path=$(command -v iscsi-test-cu); then
	iscsi_bins+=(--bin "$path")
fi
# dmsetup for the power-cut scenario's device-mapper tables (hil.sh install adds it; the scenario
# fails, saying so, without it).
dm_bins=()
if path=$(command -v dmsetup); then
	dm_bins+=(--bin "$path")
fi
# mkfs.ext4 for power-cut-fs (e2fsprogs; the scenario fails, saying so, without it).
fs_bins=(${dm_bins[@]+"${dm_bins[@]}"})
if path=$(command -v mkfs.ext4); then
	fs_bins+=(--bin "$path")
fi
out="${HIL_OUT:-$root/target/hil/suite}"
mkdir -p "$out"
started=$SECONDS
failed=()
for s in "${scenarios[@]}"; do
	# power-cut-vfio-4k: power-cut-vfio's scripts on a namespace of 4096-byte blocks.
	base=${s%-4k}
	script="$here/scenarios/$base.sh"
	[[ -f $script ]] || { echo "hil suite: no scenario $s" >&2; exit 2; }
	dir="$out/$s"
	t0=$SECONDS
	echo "== hil: $s"
	rc=0
	# xcopy needs a namespace with Copy limits (hil.sh, HIL_NVME_NS).
	if [[ $s == xcopy ]]; then export HIL_NVME_NS=1; else unset HIL_NVME_NS; fi
	# power-cut needs a second namespace of 4 KiB blocks (hil.sh, HIL_NVME_4K).
	if [[ $s == power-cut ]]; then export HIL_NVME_4K=1; else unset HIL_NVME_4K; fi
	# power-cut-vfio needs QEMU's log of the namespace's writes (hil.sh, HIL_NVME_LOGWRITES:
	# the namespace's block size).
	case $s in
	power-cut-vfio) export HIL_NVME_LOGWRITES=512 ;;
	power-cut-vfio-4k) export HIL_NVME_LOGWRITES=4096 ;;
	*) unset HIL_NVME_LOGWRITES ;;
	esac
	extra=()
	[[ $s != iscsi ]] || extra=(${iscsi_bins[@]+"${iscsi_bins[@]}"})
	[[ $s != power-cut ]] || extra=(${dm_bins[@]+"${dm_bins[@]}"})
	# power-cut-fs: two 64 MiB file systems and their log on the namespace.
	[[ $s != power-cut-fs ]] || extra=(${fs_bins[@]+"${fs_bins[@]}"} --disk-mb 384)
	# power-cut-vfio's writer takes the whole namespace (a hardware board's disk is the
	# namespace): 16 MiB, the size the host's check replays.
	[[ $base != power-cut-vfio ]] || extra=(--disk-mb 16)
	"$here/hil.sh" run --out "$dir" --timeout "${HIL_TIMEOUT:-900}" --bin "$bin" \
		--bin "$here/scenarios/common.sh" ${sg_bins[@]+"${sg_bins[@]}"} \
		${extra[@]+"${extra[@]}"} -- "$script" || rc=$?
	# A scenario's host half (scenarios/NAME.host.sh DIR BIN), after the guest powered off:
	# power-cut-vfio checks the log QEMU wrote on the host.
	host=$here/scenarios/$base.host.sh
	hrc=0
	if [[ $rc -eq 0 && -f $host ]]; then
		"$host" "$dir" "$bin" || hrc=$?
	fi
	if [[ $rc -ne 0 ]]; then
		echo "FAIL $s: guest run exited $rc (see $dir/serial.log, $dir/share/script.log)"
		failed+=("$s")
	elif [[ $hrc -ne 0 ]]; then
		echo "FAIL $s: the host's half ($host) exited $hrc"
		failed+=("$s")
	elif ! python3 "$here/check-result.py" "$s" "$dir/share/result.json"; then
		failed+=("$s")
	fi
	echo "   $s took $((SECONDS - t0)) s"
done
echo "hil suite: ${#scenarios[@]} scenarios in $((SECONDS - started)) s; failed: ${failed[*]:-none}"
[[ ${#failed[@]} -eq 0 ]]
