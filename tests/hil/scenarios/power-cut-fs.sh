# HIL scenario: a power cut under the file store on a real file system (`--board file`, the
# appliance's usual disk: a sparse image file on ext4). power-cut.sh proves the store over a raw
# block device; here the durability of an acknowledged write also rests on the file system's
# metadata (a write into a hole allocates blocks and converts an unwritten extent; the image's
# size), which the store's fdatasync (SYNCHRONIZE CACHE) and RWF_DSYNC / O_DSYNC (FUA) must
# make durable with the data.
#
# Each cycle: a dm-log-writes target over a fresh, zeroed area of the guest's NVMe namespace
# (kernel nvme driver, volatile write cache on) logs every write, FUA write and flush of an
# ext4 made on it (mkfs.ext4 -E nodiscard: dm-log-writes' discards cannot be replayed in order;
# no lazy init, so nothing zeroes tables later), mounted, then marked (scst-accel-fs-ready).
# `scst-accel crash-writer --board file --path /mnt/pcfs/disk.img --size 16M` creates the
# image sparse and writes stamped blocks with FUA, SYNCHRONIZE CACHE and unsynced writes,
# marking the log at each acknowledgment (--log-writes-mark); it is SIGKILLed and the log
# marked at once (scst-accel-killed). After the unmount and the target's removal,
# `crash-check --pick-marks` samples the marks (the kill mark, the last three acknowledgments
# and two random ones, seeded: the seed is printed and in result.json; every mark would take
# too long under TCG), and for each `crash-check --state-at` rebuilds the device a power cut
# just before that mark leaves (the writes the log shows durable before it: FUA writes and
# those a flush before it covered; crate fs_states), which is mounted through a loop device
# (rw: the kernel recovers ext4's journal, as after a power cut; never `noload`) and its
# disk.img checked against the writer's journal (`crash-check --image --durable-up-to G`):
# the image file is there at its full size, every write acknowledged durable up to the
# mark's generation (every one at the kill mark) holds its data or a later write's, and no
# block holds data never written there (stale, torn or another LBA's). A store whose flush
# skipped the fdatasync fails here (lost blocks, tests/hil/README.md).
#
# Two cycles: the io_uring engine (forced) with O_DIRECT, and the thread engine through the page
# cache (--buffered). Needs dmsetup and mkfs.ext4 (staged by suite.sh), dm-log-writes, ext4
# and loop (hil.sh).
set -e
. ./common.sh
fail() {
	echo "power-cut-fs: $1" >&2
	exit "${2:-1}"
}
[ -x ./dmsetup ] || fail "no dmsetup in the share (hil.sh install adds the dmsetup package)" 20
[ -x ./mkfs.ext4 ] || fail "no mkfs.ext4 in the share (hil.sh install adds e2fsprogs)" 30
grep -qw ext4 /proc/filesystems || fail "the guest kernel has no ext4 (hil.sh stages the module)" 31
[ -e /dev/loop-control ] || fail "the guest kernel has no loop devices (hil.sh stages the module)" 32
ns=""
for b in /sys/block/nvme*n*; do
	[ "$(cat "$b/queue/logical_block_size")" = 512 ] && [ -b "/dev/${b##*/}" ] && ns=${b##*/} && break
done
[ -n "$ns" ] || fail "no NVMe namespace of 512-byte blocks (driver $(hil_driver "$NVME_BDF"))" 21
dev=/dev/$ns
[ "$(cat "/sys/block/$ns/queue/write_cache")" = "write back" ] ||
	fail "$dev reports no volatile write cache: flushes would be dropped before the log sees them" 22
majmin() { ./dmsetup info -c --noheadings -o major,minor --separator : "$1" | tr -d ' '; }
node() { echo "/dev/dm-$(./dmsetup info -c --noheadings -o minor "$1" | tr -d ' ')"; }
fs_sectors=131072 # 64 MiB of 512-byte sectors per cycle's file system
fs_bytes=$((fs_sectors * 512))
img_bytes=16777216
picks=6 # states checked per cycle
sectors=$(cat "/sys/block/$ns/size")
specs="uring threads--buffered"
ncycles=2
# The file systems take the namespace's first ncycles * 64 MiB (a fresh, sparse disk each run:
# zeroes, which is what a replay starts from); the log the rest.
log_at=$((ncycles * fs_sectors))
[ "$sectors" -gt $((log_at + 131072)) ] || fail "$dev has $sectors sectors: too small for $ncycles file systems and a log (suite.sh gives --disk-mb)" 33
./dmsetup create pcfs-log --table "0 $((sectors - log_at)) linear $dev $log_at"
mkdir -p /mnt/pcfs /mnt/state
# Guest seconds since boot (TCG time is what the CI budget counts).
now_s() { cut -d. -f1 /proc/uptime; }
cycles=""
n=0
for spec in $specs; do
	t0=$(now_s)
	n=$((n + 1))
	engine=${spec%%--*}
	buffered=""
	case $spec in *--buffered) buffered=--buffered ;; esac
	./dmsetup create "pcfs-data" --table "0 $fs_sectors linear $dev $(((n - 1) * fs_sectors))"
	./dmsetup create pcfs-lw --table "0 $fs_sectors log-writes $(majmin pcfs-data) $(majmin pcfs-log)"
	lw=$(node pcfs-lw)
	./mkfs.ext4 -q -F -b 4096 -N 128 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$lw" ||
		fail "cycle $n: mkfs.ext4 on the log-writes target failed" 34
	mount -t ext4 "$lw" /mnt/pcfs || fail "cycle $n: mounting the new ext4 failed" 35
	./dmsetup message pcfs-lw 0 mark scst-accel-fs-ready
	echo "power-cut-fs: cycle $n: ext4 made and mounted in $(($(now_s) - t0)) s"
	journal=/tmp/journal-$n
	seed=$((n * 100000 + RANDOM))
	out=$HIL_SHARE/writer-$n.log
	scst-accel crash-writer --board file --path /mnt/pcfs/disk.img --size 16M \
		--io-engine "$engine" $buffered --journal "$journal" --seed "$seed" --duration 120s \
		--log-writes-mark pcfs-lw >"$out" 2>&1 &
	pid=$!
	hil_wait 60 grep -q "crash-writer: writing" "$out" || { cat "$out"; fail "cycle $n: the writer never started writing" 23; }
	sleep $((2 + RANDOM % 3))
	kill -0 "$pid" || { cat "$out"; fail "cycle $n: the writer ended before it was killed" 24; }
	kill -9 "$pid"
	# The cut: a state just before this mark must keep every write the journal acknowledged.
	./dmsetup message pcfs-lw 0 mark scst-accel-killed
	wait "$pid" 2>/dev/null || true
	status=$(./dmsetup status pcfs-lw)
	echo "power-cut-fs: cycle $n ($engine${buffered:+, buffered}, seed $seed) killed; log-writes: $status"
	case $status in *logging_disabled*) fail "cycle $n: the log ran out of space ($status)" 25 ;; esac
	# The killed process's io_uring ring holds the image open until the kernel tears it down.
	polls=0
	until umount /mnt/pcfs 2>/dev/null; do
		[ $polls -lt 300 ] || fail "cycle $n: the file system is still busy 30 s after the kill" 27
		sleep 0.1
		polls=$((polls + 1))
	done
	# Remove the target once its log thread has caught up (common.sh says why).
	wait_log_caught_up pcfs-lw || fail "cycle $n: the log-writes target still logging 60 s after the kill" 29
	./dmsetup remove pcfs-lw
	./dmsetup remove pcfs-data
	log=$(node pcfs-log)
	scst-accel crash-check --log-writes "$log" --size "$fs_bytes" --pick-marks "$picks" --seed "$seed" \
		>/tmp/marks-$n || fail "cycle $n: crash-check could not pick the marks (exit $?)" 36
	echo "power-cut-fs: cycle $n: states at log entries: $(tr '\n' ';' </tmp/marks-$n)"
	t_check=$(now_s)
	states=""
	while read -r entry up_to text; do
		ts=$(now_s)
		rc=0
		scst-accel crash-check --log-writes "$log" --size "$fs_bytes" --state-at "$entry" \
			--state-out /tmp/state.img >/tmp/state.json </dev/null || rc=$?
		[ "$rc" -eq 0 ] || fail "cycle $n: crash-check could not rebuild the state at $text (exit $rc)" 37
		losetup /dev/loop0 /tmp/state.img </dev/null || fail "cycle $n: losetup of the state at $text failed" 38
		# rw: the kernel replays ext4's journal, as it would after the power cut.
		mounted=yes
		mount -t ext4 /dev/loop0 /mnt/state </dev/null || mounted=no
		size=0
		check='{"passed": false, "why": "the state does not mount"}'
		if [ $mounted = yes ]; then
			size=$(stat -c %s /mnt/state/disk.img 2>/dev/null || echo 0)
			limit=""
			[ "$up_to" = all ] || limit="--durable-up-to $up_to"
			rc=0
			scst-accel crash-check --journal "$journal" --image /mnt/state/disk.img $limit \
				>/tmp/check.json </dev/null || rc=$?
			if [ "$rc" -eq 0 ] || [ "$rc" -eq 65 ]; then
				check=$(cat /tmp/check.json)
			elif [ "$size" = 0 ]; then
				check='{"passed": false, "why": "no disk.img in the state"}'
			else
				fail "cycle $n: crash-check could not check the state at $text (exit $rc)" 26
			fi
			umount /mnt/state || fail "cycle $n: unmounting the state at $text failed" 39
		fi
		losetup -d /dev/loop0
		rm -f /tmp/state.img
		echo "power-cut-fs: cycle $n, state at $text (entry $entry, durable up to $up_to, $(($(now_s) - ts)) s): disk.img $size bytes: $check" | cut -c1-600
		entry_json="{\"entry\": $entry, \"mark\": \"$text\", \"durable_up_to\": \"$up_to\", \"mounted\": $([ $mounted = yes ] && echo true || echo false), \"file_bytes\": $size, \"rebuilt\": $(cat /tmp/state.json), \"check\": $check}"
		states="${states:+$states, }$entry_json"
	done </tmp/marks-$n
	t_end=$(now_s)
	echo "power-cut-fs: cycle $n took $((t_end - t0)) s of guest time, $((t_end - t_check)) s of it checking $picks states"
	entry="{\"cycle\": $n, \"guest_seconds\": $((t_end - t0)), \"check_seconds\": $((t_end - t_check)), \"seed\": $seed, \"engine\": \"$engine\", \"buffered\": $([ -n "$buffered" ] && echo true || echo false), \"fs\": \"ext4\", \"image_bytes\": $img_bytes, \"picked\": $picks, \"states\": [$states]}"
	cycles="${cycles:+$cycles, }$entry"
done
./dmsetup remove pcfs-log
echo "{\"cycles\": [$cycles]}" >"$HIL_SHARE/result.json"
