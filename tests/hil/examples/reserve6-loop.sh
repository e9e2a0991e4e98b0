# HIL example: libiscsi's Reserve6 suite N times in one guest, to time the race of
# Reserve6.Logout / Reserve6.ITNexusLoss (tests/hil/iscsi-expected-failures.txt, docs/tcmu.md).
# The set-up is the iscsi scenario's (tests/hil/scenarios/iscsi.sh). Per run, in
# $HIL_SHARE/reserve6/: run-N.log (iscsi-test-cu --verbose), dmesg-N.log (LIO's pr_debug of the
# session teardown and SPC-2 reservation code, through dynamic debug), trace-N.txt (the target
# tracepoints: every command LIO's core starts and completes, with its initiator), cpu-N.txt
# (serve's threads' CPU ticks before and after the run). summary.txt: one line per run, per test
# passed/FAILED. reserve6-analyze.py turns these into timelines and totals.
# hil.sh passes no environment to the guest; a wrapper sourcing this file may set RESERVE6_RUNS
# (default 30), RESERVE6_LOG (serve's log filter, default info) and RESERVE6_BACKSTORE (tcmu,
# the default, or rd: LIO's own RAM disk instead of scst-accel, see reserve6-loop-rd.sh).
#
# tests/hil/hil.sh run --out DIR --bin target/release/scst-accel --bin "$(command -v iscsi-test-cu)" \
#   --bin tests/hil/scenarios/common.sh -- tests/hil/examples/reserve6-loop.sh
# tests/hil/examples/reserve6-analyze.py DIR/share/reserve6
set -u
. ./common.sh
NAME=tcmu0
HBA=7
C=/sys/kernel/config/target
IQN=iqn.2026-12.org.scst-accel:$NAME
URL=iscsi://127.0.0.1/$IQN/0
OUT=$HIL_SHARE/reserve6
RUNS=${RESERVE6_RUNS:-30}
BACKSTORE=${RESERVE6_BACKSTORE:-tcmu}
fail() { echo "reserve6 loop: $1"; exit "${2:-1}"; }
command -v iscsi-test-cu >/dev/null || fail "iscsi-test-cu is not in the guest" 20
mount -t configfs none /sys/kernel/config 2>/dev/null
[ -d $C/core ] || fail "no $C/core: target_core_mod is not loaded" 10
mkdir -p /var/target/pr /etc/target/pr
ifconfig lo 127.0.0.1 up 2>/dev/null || ip link set lo up
bind_vfio "$NVME_BDF" || fail "bind_vfio failed" 11
mkdir -p "$OUT"
mount -t debugfs none /sys/kernel/debug 2>/dev/null
mount -t tracefs none /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing
[ -d $T/events/target ] || T=/sys/kernel/debug/tracing
DD=/sys/kernel/debug/dynamic_debug/control
# The session teardown (iSCSI logout and connection loss) and the SPC-2 reservation code; the
# per-PDU pr_debug of iscsi_target.c would overflow the 128 KiB log buffer, so its teardown
# functions only.
for q in 'file target_core_pr.c +pt' 'file target_core_transport.c +pt' 'file target_core_tpg.c +pt' \
	'file target_core_tmr.c +pt' 'file target_core_user.c +pt' 'file iscsi_target_erl0.c +pt' \
	'file iscsi_target_login.c +pt' 'file iscsi_target_tpg.c +pt' \
	'func iscsit_close_connection +pt' 'func iscsit_close_session +pt' \
	'func iscsit_logout_post_handler* +pt' 'func iscsit_handle_logout_cmd +pt' \
	'func iscsit_stop_session +pt' 'func iscsit_release_commands_from_conn +pt' \
	'func iscsit_handle_task_mgt_cmd +pt'; do
	echo "$q" >$DD 2>/dev/null || echo "dynamic debug: '$q' refused"
done
echo 8192 >$T/buffer_size_kb 2>/dev/null
echo 1 >$T/events/target/enable 2>/dev/null || echo "no target tracepoints"
if [ "$BACKSTORE" = rd ]; then
	# The control: LIO's own RAM disk behind the same iSCSI target, no scst-accel at all.
	R=$C/core/rd_mcp_1/rd0
	I=$C/iscsi/$IQN/tpgt_1
	mkdir -p $R && echo -n "rd_pages=8192" >$R/control && echo 1 >$R/enable || fail "rd_mcp set-up" 14
	mkdir -p $I/np/127.0.0.1:3260 $I/lun/lun_0 && ln -s $R $I/lun/lun_0/rd0 || fail "iSCSI set-up" 14
	for a in authentication=0 generate_node_acls=1 demo_mode_write_protect=0 cache_dynamic_acls=1; do
		echo "${a#*=}" >$I/attrib/"${a%=*}"
	done
	echo 1 >$I/enable
	SERVE=
else
	# Appending (O_APPEND), so the run markers this script adds land between serve's lines.
	: >"$HIL_SHARE/serve.log"
	scst-accel --log "${RESERVE6_LOG:-info}" serve --frontend tcmu --board "${HIL_BOARD:-qemu-nvme}" \
		--pci "$NVME_BDF" --size 32M --name $NAME --tcmu-hba $HBA --state-dir /tmp/state \
		--control-socket /tmp/scst-accel.sock --tcmu-no-loop --tcmu-iscsi 127.0.0.1:3260 \
		>>"$HIL_SHARE/serve.log" 2>&1 &
	SERVE=$!
	i=0
	while [ $i -lt 120 ] && ! grep -q 'serving ' "$HIL_SHARE/serve.log" 2>/dev/null; do
		kill -0 $SERVE 2>/dev/null || { cat "$HIL_SHARE/serve.log"; fail "serve exited before serving" 12; }
		sleep 0.5
		i=$((i + 1))
	done
	grep -q 'serving ' "$HIL_SHARE/serve.log" || fail "serve not serving within 60 s" 13
fi
# serve's threads: name utime stime (clock ticks).
cpu() { [ -n "$SERVE" ] || return 0; for t in /proc/$SERVE/task/*; do echo "$(cat $t/comm) $(cut -d' ' -f14,15 $t/stat)"; done; }
dmesg -c >"$OUT/dmesg-setup.log"
: >"$OUT/summary.txt"
n=1
while [ $n -le "$RUNS" ]; do
	echo >$T/trace
	cpu >"$OUT/cpu-$n.txt"
	msg="reserve6 run $n start: wall $(date +%T), uptime $(cut -d" " -f1 /proc/uptime)"
	echo "$msg" >/dev/kmsg
	echo "$msg" >$T/trace_marker
	echo "$msg" >>"$HIL_SHARE/serve.log"
	iscsi-test-cu --dataloss --verbose --test=ALL.Reserve6 "$URL" >"$OUT/run-$n.log" 2>&1
	msg="reserve6 run $n end: wall $(date +%T), uptime $(cut -d" " -f1 /proc/uptime)"
	echo "$msg" >/dev/kmsg
	echo "$msg" >$T/trace_marker
	echo "$msg" >>"$HIL_SHARE/serve.log"
	echo "--" >>"$OUT/cpu-$n.txt"
	cpu >>"$OUT/cpu-$n.txt"
	cat $T/trace >"$OUT/trace-$n.txt"
	dmesg -c >"$OUT/dmesg-$n.log"
	line="run $n:"
	for t in Logout ITNexusLoss 2Initiators Simple; do
		r=$(grep -A30 "Test: $t " "$OUT/run-$n.log" | grep -m1 -E '^(passed|FAILED)$|\.\.\.passed' |
			sed 's/.*passed.*/passed/')
		line="$line $t=${r:-?}"
	done
	echo "$line" | tee -a "$OUT/summary.txt"
	n=$((n + 1))
done
echo "reserve6 loop: Logout failed $(grep -c 'Logout=FAILED' "$OUT/summary.txt") of $RUNS," \
	"ITNexusLoss failed $(grep -c 'ITNexusLoss=FAILED' "$OUT/summary.txt") of $RUNS"
if [ -n "$SERVE" ]; then
	kill -TERM $SERVE
	wait $SERVE
	echo "serve exited $?"
	tail -3 "$HIL_SHARE/serve.log"
fi
exit 0
