#!/usr/bin/env bash
# The peer benchmark (issues 5 and 13): in one QEMU guest, on one emulated NVMe controller,
# Linux's own nvme driver (fio) against scst-accel's NVMe engine alone (bench's store layer),
# alternated in rounds, then once each the SCSI path through the loopback kernel and fio on the
# /dev/sdX LIO serves through `serve --frontend tcmu`. Prints every figure and the ratio
# scst-accel / kernel (per round, and the median). A benchmark, not a test: the figures depend
# on the host's load (TCG is CPU-bound); compare ratios from one run.
#
#   tests/hil/bench.sh [--bin PATH]         HIL_BENCH_SECONDS (default 5) per workload,
#                                          HIL_BENCH_ROUNDS (default 3) alternated rounds,
#                                          HIL_BENCH_HUGEPAGES (default 0) 2 MiB pages reserved
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=""
if [[ ${1:-} == --bin ]]; then
	bin=$2
fi
why=$("$here/hil.sh" check 2>&1) || { echo "hil bench: QEMU cannot run here: $why" >&2; exit 3; }
if [[ -z $bin ]]; then
	(cd "$root" && cargo build --release --locked -p scst-accel)
	bin="${CARGO_TARGET_DIR:-$root/target}/release/scst-accel"
fi
out="${HIL_OUT:-$root/target/hil/bench}"
# The guest gets no environment from here: the two knobs go in as the script's first lines.
seconds=${HIL_BENCH_SECONDS:-5}
rounds=${HIL_BENCH_ROUNDS:-3}
hugepages=${HIL_BENCH_HUGEPAGES:-0}
[[ $seconds =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ && $hugepages =~ ^[0-9]+$ ]] || {
	echo "hil bench: HIL_BENCH_SECONDS and HIL_BENCH_ROUNDS take whole numbers > 0, HIL_BENCH_HUGEPAGES >= 0" >&2
	exit 2
}
script=$(mktemp)
trap 'rm -f "$script"' EXIT
{
	echo "HIL_BENCH_SECONDS=$seconds HIL_BENCH_ROUNDS=$rounds HIL_BENCH_HUGEPAGES=$hugepages"
	cat "$here/scenarios/bench.sh"
} >"$script"
"$here/hil.sh" run --out "$out" --timeout $((600 + rounds * (40 + 4 * seconds))) --bin "$bin" \
	--bin "$(command -v fio)" --bin "$here/scenarios/common.sh" -- "$script"
python3 - "$out/share" <<'PY'
import json, sys, os
share = sys.argv[1]
def load(name):
    with open(os.path.join(share, name)) as f:
        return json.load(f)
import glob, statistics
rounds = sorted(int(f.rsplit("-", 1)[1][:-5]) for f in glob.glob(os.path.join(share, "engine-*.json")))
assert rounds, "no engine-N.json: the scenario did not run a round"
rows = []
for kind, label, wl in (("randread", "4 KiB random read QD32", "4k-randread-qd32"),
                        ("seqread", "128 KiB sequential read QD8", "128k-seqread-qd8")):
    ratios = []
    for r in rounds:
        k = load(f"kernel-{kind}-{r}.json")["jobs"][0]["read"]
        e = {c["workload"]: c for c in load(f"engine-{r}.json")["results"] if c["layer"] == "store"}[wl]
        assert e["healthy"], e
        ratios.append(e["iops"] / k["iops"])
        rows.append((label, f"engine alone, round {r}", k, e["iops"], e["mb_per_s"]))
    k = load(f"kernel-{kind}-{rounds[-1]}.json")["jobs"][0]["read"]
    a = load(f"accel-{kind}.json")
    assert a["verify_errors"] == 0 and a["unanswered_commands"] == 0, a
    rows.append((label, "SCSI via loopback", k, a["iops"], a["mb_per_s"]))
    tcmu = os.path.join(share, f"tcmu-{kind}.json")
    if os.path.exists(tcmu):
        t = load(f"tcmu-{kind}.json")["jobs"][0]["read"]
        rows.append((label, "/dev/sdX via TCMU", k, t["iops"], t["bw_bytes"] / 1e6))
    else:
        print(f"{label}: no TCMU figures (the scenario says why in its log)")
    rows.append((label, f"engine alone: median of {len(ratios)} round ratios {statistics.median(ratios):.2f}", None, 0, 0))
print(f"{'workload':30} {'scst-accel path':26} {'kernel IOPS':>12} {'MB/s':>8} {'scst-accel IOPS':>16} {'MB/s':>8} {'ratio':>6}")
for label, path, k, aiops, amb in rows:
    if k is None:
        print(f"{label:30} {path}")
        continue
    kiops, kmb = k["iops"], k["bw_bytes"] / 1e6
    print(f"{label:30} {path:26} {kiops:12.0f} {kmb:8.1f} {aiops:16.0f} {amb:8.1f} {aiops / kiops:6.2f}")
PY
