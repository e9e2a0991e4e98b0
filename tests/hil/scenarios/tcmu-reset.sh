# HIL scenario: the NVMe controller reset under load, under TCMU. `scst-accel serve --frontend
# tcmu` on QEMU's controller through VFIO, LIO's tcm_loop giving /dev/sdX; a writer, then a
# reader, each cross a function-level reset of the controller (each transfer repeated until one
# whole transfer has ended after the reset, so the reset meets I/O on a fast host too). The reset comes from outside
# (`echo 1 > /sys/bus/pci/devices/BDF/reset`, the kernel's FLR of the vfio-bound function): serve
# has no hook to reset on request (the reset scenario's `demo --reset-during-load` calls the
# controller's recovery from inside), and a reset nobody asked for is the harder case: the
# commands in the controller are lost without a completion, the store must notice them by its
# command timeout (--command-timeout 2s here), abort, reset and re-create its queues, and the
# commands must be answered so the kernel retries them. Checks: both transfers end with status 0
# and the data read back equals the data written, the store logged two recoveries; then a LUN
# reset (sg_reset) under a writer, which LIO reports on the ring as a task management notice:
# the writer ends with status 0, its data intact, the notice logged; serve exits 0 and removes
# its configfs objects, and (hil.sh) the kernel log is clean.
set -u
. ./common.sh
MB=${TCMU_MB:-8}
C=/sys/kernel/config/target
now() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "tcmu-reset scenario: $1"; exit "${2:-1}"; }
mount -t configfs none /sys/kernel/config 2>/dev/null
[ -d $C/core ] || fail "no $C/core: target_core_mod is not loaded" 10
bind_vfio "$NVME_BDF" || fail "bind_vfio failed" 11
RESET=/sys/bus/pci/devices/$NVME_BDF/reset
[ -w "$RESET" ] || fail "no $RESET: the function cannot be reset from sysfs" 14
scst-accel --log info serve --frontend tcmu --board "${HIL_BOARD:-qemu-nvme}" --pci "$NVME_BDF" \
	--size 32M --name tcmu0 --tcmu-hba 7 --state-dir /tmp/state \
	--control-socket /tmp/scst-accel.sock --command-timeout 2s >"$HIL_SHARE/serve.log" 2>&1 &
SERVE=$!
require_disks 1 $SERVE "$HIL_SHARE/serve.log"
N=$((MB * 256))
dd if=/dev/urandom of=/tmp/pattern bs=4096 count=$N 2>/dev/null
# $1: what; the rest: the dd command. The transfer is repeated (same data, same blocks) until
# the reset has happened and one whole transfer has finished after it, so the reset always meets
# I/O in flight however fast the host is (a single 8 MiB dd finished before a reset 2 s in on a
# quiet host). The reset comes once the first transfer is under way; waits are bounded.
across_reset() {
	what=$1
	shift
	rm -f "/tmp/$what.stop" "/tmp/$what.done"
	(
		n=0
		while [ ! -e "/tmp/$what.stop" ]; do
			"$@" 2>"/tmp/$what.log" || exit 1
			n=$((n + 1))
			echo $n >"/tmp/$what.done"
		done
	) &
	pid=$!
	sleep 0.5
	running=no
	kill -0 $pid 2>/dev/null && running=yes
	before=$(cat "/tmp/$what.done" 2>/dev/null || echo 0)
	t=$(now)
	echo 1 >"$RESET"
	echo "tcmu-reset scenario: function reset at $t s with the $what running: $running ($before transfers done)"
	# Two more transfers ended: the one the reset cut into, and a whole one after it.
	i=0
	while kill -0 $pid 2>/dev/null && [ "$(cat "/tmp/$what.done" 2>/dev/null || echo 0)" -lt $((before + 2)) ] &&
		[ $i -lt 240 ]; do
		sleep 0.5
		i=$((i + 1))
	done
	touch "/tmp/$what.stop"
	i=0
	while kill -0 $pid 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
	hung=false
	kill -0 $pid 2>/dev/null && { hung=true; kill -9 $pid; }
	wait $pid
	rc=$?
	echo "tcmu-reset scenario: $what rc $rc, hung $hung, $(cat "/tmp/$what.done" 2>/dev/null || echo 0) transfers, done $(awk "BEGIN { print $(now) - $t }") s after the reset"
	tail -1 "/tmp/$what.log"
	eval "${what}_rc=$rc ${what}_hung=$hung ${what}_running=$running"
}
across_reset writer dd if=/tmp/pattern of="/dev/$SD" bs=4096 count=$N seek=16 oflag=direct
across_reset reader dd if="/dev/$SD" of=/tmp/back bs=4096 count=$N skip=16 iflag=direct
A=$(md5sum </tmp/pattern | cut -d' ' -f1)
B=$(md5sum </tmp/back | cut -d' ' -f1)
verified=false
[ "$A" = "$B" ] && verified=true
# A LUN reset under load: sg_reset --device makes the SCSI midlayer reset the device, which
# tcm_loop turns into LIO's LOGICAL UNIT RESET; LIO aborts the commands in flight and posts a
# task management notice on the ring (tmr_notification=1), which serve acts on (exec.rs). The
# midlayer then retries what was aborted: the writer must end with status 0, its data intact.
lun_reset=skipped
lun_reset_notices=0
if command -v sg_reset >/dev/null; then
	dd if=/dev/urandom of=/tmp/pattern2 bs=4096 count=$N 2>/dev/null
	# Repeated until a whole transfer ended after the reset, as across_reset does.
	rm -f /tmp/lunreset.stop /tmp/lunreset.done
	(
		n=0
		while [ ! -e /tmp/lunreset.stop ]; do
			dd if=/tmp/pattern2 of="/dev/$SD" bs=4096 count=$N seek=$((16 + N)) oflag=direct \
				2>/tmp/lunreset.log || exit 1
			n=$((n + 1))
			echo $n >/tmp/lunreset.done
		done
	) &
	pid=$!
	sleep 0.5
	lr_running=no
	kill -0 $pid 2>/dev/null && lr_running=yes
	before=$(cat /tmp/lunreset.done 2>/dev/null || echo 0)
	sg_reset --device "/dev/$SD"
	sg_rc=$?
	echo "tcmu-reset scenario: sg_reset --device rc $sg_rc with the writer running: $lr_running"
	i=0
	while kill -0 $pid 2>/dev/null && [ "$(cat /tmp/lunreset.done 2>/dev/null || echo 0)" -lt $((before + 2)) ] &&
		[ $i -lt 240 ]; do
		sleep 0.5
		i=$((i + 1))
	done
	touch /tmp/lunreset.stop
	i=0
	while kill -0 $pid 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
	kill -0 $pid 2>/dev/null && kill -9 $pid
	wait $pid
	lr_rc=$?
	dd if="/dev/$SD" of=/tmp/back2 bs=4096 count=$N skip=$((16 + N)) iflag=direct 2>/dev/null
	lun_reset=failed
	[ $sg_rc = 0 ] && [ $lr_rc = 0 ] && [ $lr_running = yes ] &&
		[ "$(md5sum </tmp/pattern2 | cut -d' ' -f1)" = "$(md5sum </tmp/back2 | cut -d' ' -f1)" ] && lun_reset=ok
	echo "tcmu-reset scenario: LUN reset under load: writer rc $lr_rc, data verified: $lun_reset"
else
	echo "tcmu-reset scenario: SKIPPED the LUN reset: sg_reset (sg3-utils) is not in the guest"
fi
kill -TERM $SERVE
wait $SERVE
serve_rc=$?
recoveries=$(grep -c 'recovering the controller' "$HIL_SHARE/serve.log")
lun_reset_notices=$(grep -c 'task management 5 (LUN reset)' "$HIL_SHARE/serve.log")
grep -E 'command timeout|recovering the controller|controller recovered|task management|commands started' \
	"$HIL_SHARE/serve.log" | cut -c1-260
left=$(ls -d $C/core/user_* $C/loopback/naa.* 2>/dev/null | tr '\n' ' ')
clean=true
[ -z "$left" ] || clean=false
cat >"$HIL_SHARE/result.json" <<EOF
{"scenario": "tcmu-reset", "device": "$SD", "mib": $MB, "verified": $verified,
 "writer_rc": $writer_rc, "writer_hung": $writer_hung, "writer_running_at_reset": "$writer_running",
 "reader_rc": $reader_rc, "reader_hung": $reader_hung, "reader_running_at_reset": "$reader_running",
 "recoveries": $recoveries, "lun_reset": "$lun_reset", "lun_reset_notices": $lun_reset_notices,
 "serve_rc": $serve_rc, "configfs_clean": $clean}
EOF
cat "$HIL_SHARE/result.json"
exit 0
