# HIL scenario: kill -9 scst-accel during I/O, then start again on the same device: the second
# run must reset the controller and serve verified I/O.
set -e
. ./common.sh
bind_vfio "$NVME_BDF"
scst-accel demo $demo_args --duration 600s --queue-depth 32 --rw write --prefill false --json \
	>/tmp/killed.json 2>"$HIL_SHARE/killed.log" &
pid=$!
# Kill it only once it is moving data: its progress shows in the controller's doorbells, which we
# cannot see from here, so wait for the demo's own "timed phase" log line (bounded).
if ! hil_wait "${HIL_KILL_WAIT:-120}" grep -q "timed phase" "$HIL_SHARE/killed.log"; then
	echo "restart: the first run never reached its timed phase" >&2
	cat "$HIL_SHARE/killed.log" >&2
	kill -9 "$pid" 2>/dev/null || true
	exit 1
fi
sleep 2
kill -0 "$pid" || { echo "restart: the first run ended before it was killed" >&2; exit 1; }
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "restart: killed scst-accel (pid $pid) with SIGKILL during I/O"
scst-accel demo $demo_args --duration "${HIL_DURATION:-5s}" --queue-depth 32 --json \
	>"$HIL_SHARE/result.json" 2>"$HIL_SHARE/second.log"
grep -i "nvme\|controller" "$HIL_SHARE/second.log" | head -n 20 || true
