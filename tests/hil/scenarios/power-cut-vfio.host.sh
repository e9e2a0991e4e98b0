#!/usr/bin/env bash
# The host's half of the power-cut-vfio scenario (suite.sh runs it after the guest powered
# off): the blklogwrites log QEMU wrote (DIR/nvme-log.img) replayed for each cycle up to its
# end mark and checked against that cycle's journal (`crash-check --log-format qemu`). Writes
# DIR/share/result.json for check-result.py.
#
#   power-cut-vfio.host.sh DIR BIN
set -euo pipefail
dir=$1 bin=$2
share=$dir/share
log=$dir/nvme-log.img
[[ -s $share/cycles.json ]] || { echo "power-cut-vfio: the guest wrote no cycles.json" >&2; exit 1; }
[[ -f $log ]] || { echo "power-cut-vfio: no log $log (hil.sh HIL_NVME_LOGWRITES)" >&2; exit 1; }
entries=()
# One line per cycle: its number, seed, block size and the disk's bytes.
cycles=$(python3 -c 'import json,sys
for c in json.load(open(sys.argv[1]))["cycles"]:
    print(c["cycle"], c["seed"], c["block_size"], c["disk_bytes"])' "$share/cycles.json")
[[ -n $cycles ]] || { echo "power-cut-vfio: cycles.json lists no cycle" >&2; exit 1; }
while read -r n seed bs size; do
	rc=0
	"$bin" crash-check --journal "$share/journal-$n" --block-size "$bs" --log-writes "$log" \
		--log-format qemu --log-end-mark "scst-accel-end-$n" --size "$size" --subsets 4 --seed "$seed" \
		</dev/null >"$share/cycle-$n.json" || rc=$?
	echo "power-cut-vfio: cycle $n crash-check exit $rc: $(cut -c1-300 "$share/cycle-$n.json")"
	[[ $rc -eq 0 || $rc -eq 65 ]] || { echo "power-cut-vfio: cycle $n: crash-check could not check (exit $rc)" >&2; exit 1; }
	entries+=("{\"cycle\": $n, \"seed\": $seed, \"block_size\": $bs, \"check\": $(cat "$share/cycle-$n.json")}")
done <<<"$cycles"
(IFS=,; echo "{\"cycles\": [${entries[*]}]}") >"$share/result.json"
