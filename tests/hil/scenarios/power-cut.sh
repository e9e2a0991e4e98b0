# HIL scenario: a power cut under the file store, on a real block device. The crash writer
# (`scst-accel crash-writer`: the handler, its file store and the loopback kernel in one
# process) writes stamped blocks with FUA, SYNCHRONIZE CACHE and unsynced writes to a
# device-mapper log-writes target over the guest's NVMe namespace (kernel nvme driver, volatile
# write cache on), which logs every write, FUA write and flush the device is sent. After a
# SIGKILL and the target's removal, `scst-accel crash-check --log-writes` rebuilds what a power
# cut at that instant may leave on the device (the FUA writes and those a later flush covered;
# with and without random choices of the rest) and checks each state against the writer's
# journal: no write acknowledged durable lost, no block with data never written there. The
# writer also marks the log at each acknowledgment (--log-writes-mark), and each acknowledged
# write is checked against the state a cut just before its mark leaves: a store that
# acknowledged a FLUSH or a FUA write before the device completed it fails there. A SIGKILL
# alone (tools/tests/crash.rs) cannot show this: the kernel's caches survive it.
#
# Six cycles: on the namespace of 512-byte blocks the io_uring (forced: `uring`, which fails
# where io_uring is unavailable, where `auto` would fall back to the threads and test them
# twice) and thread engines, each with
# O_DIRECT and through the page cache (--buffered); on a second namespace of 4096-byte blocks
# (hil.sh HIL_NVME_4K) io_uring with O_DIRECT and threads through the page cache. The disk has
# the device's block size (a block device's block size is its own). Needs dmsetup (staged by
# suite.sh) and dm-log-writes (hil.sh).
set -e
. ./common.sh
fail() {
	echo "power-cut: $1" >&2
	exit "${2:-1}"
}
[ -x ./dmsetup ] || fail "no dmsetup in the share (hil.sh install adds the dmsetup package)" 20
# The two namespaces (hil.sh HIL_NVME_4K), each found by its logical block size (not by its
# name: the kernel names namespaces in the order it scans them).
ns_of() {
	for b in /sys/block/nvme*n*; do
		if [ "$(cat "$b/queue/logical_block_size")" = "$1" ] && [ -b "/dev/${b##*/}" ]; then
			echo "${b##*/}"
			return 0
		fi
	done
	return 1
}
ns=$(ns_of 512) || fail "no NVMe namespace of 512-byte blocks (driver $(hil_driver "$NVME_BDF"))" 21
ns4k=$(ns_of 4096) || fail "no NVMe namespace of 4096-byte blocks (hil.sh adds one with HIL_NVME_4K=1)" 28
# majmin NAME: the major:minor of a device-mapper device (no udev here, so no /dev/mapper names;
# devtmpfs makes /dev/dm-N).
majmin() { ./dmsetup info -c --noheadings -o major,minor --separator : "$1" | tr -d ' '; }
node() { echo "/dev/dm-$(./dmsetup info -c --noheadings -o minor "$1" | tr -d ' ')"; }
data=32768 # 16 MiB of 512-byte sectors for the disk; the rest of the namespace holds the log
cycles=""
n=0
# cycles_on NAMESPACE SPEC...: one cycle per SPEC (an engine, then --buffered or nothing) with
# the disk on NAMESPACE's first 16 MiB and the log on the rest.
cycles_on() {
	ns=$1
	shift
	dev=/dev/$ns
	[ "$(cat "/sys/block/$ns/queue/write_cache")" = "write back" ] ||
		fail "$dev reports no volatile write cache: flushes would be dropped before the log sees them" 22
	sectors=$(cat "/sys/block/$ns/size")
	bs=$(cat "/sys/block/$ns/queue/logical_block_size")
	./dmsetup create pc-data --table "0 $data linear $dev 0"
	./dmsetup create pc-log --table "0 $((sectors - data)) linear $dev $data"
	for spec in "$@"; do
		n=$((n + 1))
		cycle $spec
	done
	./dmsetup remove pc-data
	./dmsetup remove pc-log
}
# cycle ENGINE [--buffered]: one killed writer on the log-writes target, and its check.
cycle() {
	engine=$1 buffered=${2:-}
	./dmsetup create pc-lw --table "0 $data log-writes $(majmin pc-data) $(majmin pc-log)"
	journal=/tmp/journal-$n
	# A new access pattern and write mix every run (printed and in result.json, to replay one).
	seed=$((n * 100000 + RANDOM))
	out=$HIL_SHARE/writer-$n.log
	scst-accel crash-writer --board blockdev --path "$(node pc-lw)" --size 16M \
		--io-engine "$engine" $buffered --journal "$journal" --seed "$seed" --duration 120s \
		--log-writes-mark pc-lw >"$out" 2>&1 &
	pid=$!
	hil_wait 60 grep -q "crash-writer: writing" "$out" || { cat "$out"; fail "cycle $n: the writer never started writing" 23; }
	sleep $((2 + RANDOM % 3))
	kill -0 "$pid" || { cat "$out"; fail "cycle $n: the writer ended before it was killed" 24; }
	kill -9 "$pid"
	wait "$pid" 2>/dev/null || true
	status=$(./dmsetup status pc-lw)
	echo "power-cut: cycle $n ($engine${buffered:+, buffered}, seed $seed) killed; log-writes: $status"
	case $status in *logging_disabled*) fail "cycle $n: the log ran out of space ($status)" 25 ;; esac
	# The killed process's io_uring ring holds the device open until the kernel's teardown of
	# the ring drops its registered file (on a kernel worker, after the reap), and that last
	# close writes the page cache back: remove the target once nothing holds it.
	polls=0
	while [ "$(./dmsetup info -c --noheadings -o open pc-lw | tr -d ' ')" != 0 ]; do
		[ $polls -lt 300 ] || fail "cycle $n: the log-writes device is still open 30 s after the kill" 27
		sleep 0.1
		polls=$((polls + 1))
	done
	# Remove the target once its log thread has caught up (common.sh says why).
	wait_log_caught_up pc-lw || fail "cycle $n: the log-writes target still logging 60 s after the kill" 29
	./dmsetup remove pc-lw
	rc=0
	scst-accel crash-check --journal "$journal" --block-size "$bs" --log-writes "$(node pc-log)" \
		--size 16M --subsets 4 --seed "$seed" >"$HIL_SHARE/cycle-$n.json" || rc=$?
	echo "power-cut: cycle $n crash-check exit $rc: $(cat "$HIL_SHARE/cycle-$n.json")" | cut -c1-400
	[ "$rc" -eq 0 ] || [ "$rc" -eq 65 ] || fail "cycle $n: crash-check could not check (exit $rc)" 26
	entry="{\"cycle\": $n, \"seed\": $seed, \"block_size\": $bs, \"engine\": \"$engine\", \"buffered\": $([ -n "$buffered" ] && echo true || echo false), \"check\": $(cat "$HIL_SHARE/cycle-$n.json")}"
	cycles="${cycles:+$cycles, }$entry"
}
cycles_on "$ns" "uring" "threads" "uring --buffered" "threads --buffered"
cycles_on "$ns4k" "uring" "threads --buffered"
echo "{\"cycles\": [$cycles]}" >"$HIL_SHARE/result.json"
