# HIL scenario: a power cut under the NVMe engine, on QEMU's controller through VFIO. The
# namespace's drive is QEMU's blklogwrites filter (hil.sh HIL_NVME_LOGWRITES), which logs on
# the host every write and flush the emulated controller makes, in completion order. The crash
# writer (`scst-accel crash-writer --board qemu-nvme`: the handler, the accelerator store on the
# NVMe engine and the loopback kernel in one process) writes stamped blocks with FUA, SYNCHRONIZE
# CACHE and unsynced writes, and UNMAPs ranges of its thin disk (--unmaps: NVMe deallocations,
# which QEMU logs as discards, in order, and punches into the image), marking each acknowledgment in band (a write of a mark block to the
# disk's last 4 KiB, waited for: a guest cannot send blklogwrites a mark). Each cycle's writer is
# SIGKILLed, then a second writer process writes the cycle's end mark (`--end-mark`), so that
# what the controller made after it (the next cycle, the drive's flush at QEMU's exit) is not
# taken for the cycle's. After the guest powers off, the host (power-cut-vfio.host.sh) replays
# the log with `crash-check --log-format qemu` up to each cycle's end mark: every state a power
# cut may leave, and each acknowledgment at its mark. QEMU's controller ignores FUA (docs/nvme.md
# "FUA"): this is what catches a store that trusts it.
#
# Four cycles on one disk and one journal (generations continue across cycles, and each
# cycle's check covers the cycles before it). The suite runs it on a namespace of 512-byte
# blocks (power-cut-vfio) and of 4096-byte blocks (power-cut-vfio-4k).
set -e
. ./common.sh
fail() {
	echo "power-cut-vfio: $1" >&2
	exit "${2:-1}"
}
bind_vfio "$NVME_BDF" >/dev/null || fail "binding $NVME_BDF to vfio-pci failed" 20
# The disk's block size and size (the namespace's: hil.sh HIL_NVME_LOGWRITES, suite.sh
# --disk-mb), for the host's check.
scst-accel diag --board qemu-nvme --pci "$NVME_BDF" --json >"$HIL_SHARE/diag.json" ||
	fail "diag could not open the controller" 24
bs=$(sed -n 's/^ *"block_size": *\([0-9]*\).*/\1/p' "$HIL_SHARE/diag.json" | head -1)
blocks=$(sed -n 's/^ *"num_blocks": *\([0-9]*\).*/\1/p' "$HIL_SHARE/diag.json" | head -1)
[ -n "$bs" ] && [ -n "$blocks" ] || { cat "$HIL_SHARE/diag.json"; fail "diag reported no geometry" 24; }
journal=/tmp/journal
cycles=""
for n in 1 2 3 4; do
	seed=$((n * 100000 + RANDOM))
	out=$HIL_SHARE/writer-$n.log
	scst-accel crash-writer --board qemu-nvme --pci "$NVME_BDF" --in-band-marks --unmaps \
		--journal "$journal" --seed "$seed" --duration 120s >"$out" 2>&1 &
	pid=$!
	hil_wait 60 grep -q "crash-writer: writing" "$out" || { cat "$out"; fail "cycle $n: the writer never started writing" 21; }
	sleep $((2 + RANDOM % 3))
	kill -0 "$pid" || { cat "$out"; fail "cycle $n: the writer ended before it was killed" 22; }
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	# The killed writer's VFIO file descriptors are closed with it (the function is reset);
	# this process brings the controller up again and writes the cycle's end mark. The writer
	# has one command at a time: a command of the killed one that QEMU logged after the mark
	# (if its reset let one run on) falls outside the cycle, as a write the power cut lost,
	# which no acknowledgment covered.
	scst-accel crash-writer --board qemu-nvme --pci "$NVME_BDF" \
		--end-mark "scst-accel-end-$n" >"$HIL_SHARE/end-$n.log" 2>&1 ||
		{ cat "$HIL_SHARE/end-$n.log"; fail "cycle $n: writing the end mark failed" 23; }
	cp "$journal" "$HIL_SHARE/journal-$n"
	echo "power-cut-vfio: cycle $n (seed $seed) killed and marked; journal $(wc -c <"$journal") bytes"
	cycles="${cycles:+$cycles, }{\"cycle\": $n, \"seed\": $seed, \"block_size\": $bs, \"disk_bytes\": $((blocks * bs))}"
done
echo "{\"cycles\": [$cycles]}" >"$HIL_SHARE/cycles.json"
