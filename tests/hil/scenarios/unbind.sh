# HIL scenario: the NVMe controller unbound from vfio-pci while `scst-accel serve --frontend tcmu`
# drives it under a writer. The unbind waits in the kernel (vfio_unregister_group_dev) until the
# device fd is closed, signalling the device request eventfd serve registered at open
# (VFIO_PCI_REQ_IRQ_INDEX) at once and every 10 s; serve must notice, stop that disk through its
# teardown (drain, shutdown and reset, unmap, close) and say why. Checks: the unbind returns
# within 30 s (bounded wait: without the eventfd it blocks for as long as serve runs), the
# function is no longer bound to vfio-pci, the writer ends (not hung), serve's log gives the
# reason ("the kernel asked for the device back"), serve exits 74 (its only disk failed), every
# configfs object is removed, the kernel's nvme driver takes the controller back, and (hil.sh)
# the kernel log has no DMAR fault, VFIO warning or oops.
set -u
. ./common.sh
C=/sys/kernel/config/target
now() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "unbind scenario: $1"; exit "${2:-1}"; }
mount -t configfs none /sys/kernel/config 2>/dev/null
[ -d $C/core ] || fail "no $C/core: target_core_mod is not loaded" 10
bind_vfio "$NVME_BDF" || fail "bind_vfio failed" 11
scst-accel --log info serve --frontend tcmu --board "${HIL_BOARD:-qemu-nvme}" --pci "$NVME_BDF" \
	--size 32M --name tcmu0 --tcmu-hba 7 --state-dir /tmp/state \
	--control-socket /tmp/scst-accel.sock >"$HIL_SHARE/serve.log" 2>&1 &
SERVE=$!
require_disks 1 $SERVE "$HIL_SHARE/serve.log"
# The writer loops until the disk goes (its dd then fails), so the unbind meets I/O in flight.
(
	while dd if=/dev/zero of="/dev/$SD" bs=65536 count=256 oflag=direct 2>/tmp/writer.log; do :; done
) &
WRITER=$!
sleep 2
writer_running=no
kill -0 $WRITER 2>/dev/null && writer_running=yes
# The unbind on a thread of the script's, waited for 30 s (0.5 s polls). Not under `timeout`:
# the kernel's wait turns uninterruptible after the first signal (vfio_unregister_group_dev),
# so a timed-out writer would stay blocked with the script. Past 30 s serve is stopped, which
# closes the device and lets the unbind return, and the scenario fails on unbind_rc 124.
t=$(now)
sigterm_sent=false
rm -f /tmp/unbind.rc
( echo "$NVME_BDF" >/sys/bus/pci/drivers/vfio-pci/unbind; echo $? >/tmp/unbind.rc ) &
UNBIND=$!
i=0
while [ ! -e /tmp/unbind.rc ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
unbind_s=$(awk "BEGIN { print $(now) - $t }")
if [ -e /tmp/unbind.rc ]; then
	unbind_rc=$(cat /tmp/unbind.rc)
else
	unbind_rc=124
	echo "unbind scenario: the unbind still blocks after $unbind_s s: stopping serve so that it returns"
	sigterm_sent=true
	kill -TERM $SERVE
fi
i=0
while kill -0 $UNBIND 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
driver_after=$(hil_driver "$NVME_BDF")
echo "unbind scenario: unbind rc $unbind_rc after $unbind_s s (writer running: $writer_running); driver now '$driver_after'"
# The writer ends once the disk is gone; bounded.
i=0
while kill -0 $WRITER 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
writer_hung=false
kill -0 $WRITER 2>/dev/null && { writer_hung=true; kill -9 $WRITER; }
wait $WRITER 2>/dev/null
tail -2 /tmp/writer.log
# serve stops on its own once no disk serves; SIGTERM if it has not within 60 s.
i=0
while kill -0 $SERVE 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
kill -0 $SERVE 2>/dev/null && { echo "unbind scenario: serve still running 60 s on; SIGTERM"; sigterm_sent=true; kill -TERM $SERVE; }
wait $SERVE
serve_rc=$?
reason_logged=$(grep -c 'the kernel asked for the device back' "$HIL_SHARE/serve.log")
grep -E 'asked for the device back|store failed|torn down|shut down|closing VFIO|device request' \
	"$HIL_SHARE/serve.log" | cut -c1-300
left=$(ls -d $C/core/user_* $C/loopback/naa.* 2>/dev/null | tr '\n' ' ')
clean=true
[ -z "$left" ] || clean=false
# The function is free: the kernel's nvme driver takes it again.
rebound=false
bind_nvme "$NVME_BDF" >/dev/null && rebound=true
cat >"$HIL_SHARE/result.json" <<JSON
{"scenario": "unbind", "device": "$SD", "unbind_rc": $unbind_rc, "unbind_s": $unbind_s,
 "driver_after": "$driver_after", "writer_running": "$writer_running", "writer_hung": $writer_hung,
 "reason_logged": $reason_logged, "serve_rc": $serve_rc, "sigterm_sent": $sigterm_sent, "configfs_clean": $clean,
 "rebound": $rebound}
JSON
cat "$HIL_SHARE/result.json"
exit 0
