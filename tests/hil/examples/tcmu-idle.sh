# What an idle `serve --frontend tcmu` costs (issue 13, "quiet when idle"): two RAM disks served
# through LIO (tcm_loop), some I/O, then 30 s with none; the CPU ticks the process used in those
# 30 s (utime + stime from /proc/PID/stat, USER_HZ) and each thread's context switches. Run with
#   tests/hil/hil.sh run --out DIR --bin target/release/scst-accel \
#     --bin tests/hil/scenarios/common.sh -- tests/hil/examples/tcmu-idle.sh
set -u
. ./common.sh
mount -t configfs none /sys/kernel/config 2>/dev/null
cat >/tmp/idle.toml <<'TOML'
[service]
frontend = "tcmu"
state_dir = "/tmp/state"
control_socket = "/tmp/scst-accel.sock"
[service.tcmu]
hba = 7
[[disk]]
name = "idle0"
board = "ram"
size = "32M"
[[disk]]
name = "idle1"
board = "ram"
size = "32M"
TOML
scst-accel --log info serve --config /tmp/idle.toml >"$HIL_SHARE/serve.log" 2>&1 &
serve=$!
wait_for_disks 2 $serve || echo "idle: the two disks did not appear (serve.log)"
echo "idle: disks: $(echo $DISKS)"
for d in $DISKS; do
	dd if=/dev/zero of=/dev/$d bs=64k count=16 oflag=direct 2>&1 | tail -1
done
sleep 2
ticks() { awk '{ print $14 + $15 }' /proc/$serve/stat; }
switches() {
	for t in /proc/$serve/task/*; do
		echo "$(basename $t) $(cat $t/comm) $(awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 } END { print v + n }' $t/status)"
	done
}
switches >/tmp/before
t0=$(ticks)
sleep 30
t1=$(ticks)
switches >/tmp/after
echo "idle: $((t1 - t0)) ticks of CPU (USER_HZ $(getconf CLK_TCK 2>/dev/null || echo 100)) in 30 s"
echo "idle: context switches per thread in those 30 s:"
awk 'NR == FNR { before[$1] = $3; next } { printf "idle:   %-16s %d\n", $2, $3 - before[$1] }' /tmp/before /tmp/after
kill -TERM $serve
wait $serve
echo "idle: serve exited $?"
