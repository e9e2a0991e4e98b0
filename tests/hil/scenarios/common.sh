# Sourced by the HIL scenarios (guest side, busybox sh): the demo's common arguments.
# HIL_BOARD: qemu-nvme (the board definition of QEMU's controller) or nvme (any controller).
# The demo's region is the first 32 MiB of the namespace: enough for verified random I/O, small
# enough to prefill quickly under TCG.
demo_args="--board ${HIL_BOARD:-qemu-nvme} --pci $NVME_BDF --size 32M --log ${HIL_LOG:-info}"

# wait_for_disks N PID: wait up to 60 s (0.5 s polls) for N SCSI disks (/sys/block/sd*, the
# first one's /dev node there too) while process PID lives. Sets SD to the first disk's name and
# DISKS to all of them (a line each). Returns 0 when they are there, 1 when PID ended first,
# 2 when the 60 s passed. A function, not a command substitution, so a caller's `fail` exits
# the scenario.
wait_for_disks() {
	_want=$1
	_pid=$2
	_polls=0
	while :; do
		DISKS=$(ls /sys/block | grep '^sd')
		SD=$(echo "$DISKS" | head -1)
		[ -n "$SD" ] && [ "$(echo "$DISKS" | wc -l)" -ge "$_want" ] && [ -b "/dev/$SD" ] && return 0
		kill -0 "$_pid" 2>/dev/null || return 1
		[ $_polls -ge 120 ] && return 2
		sleep 0.5
		_polls=$((_polls + 1))
	done
}

# require_disks N PID LOG: wait_for_disks, or show LOG and end the scenario with the caller's
# `fail` (12: PID ended first, 13: no disk within 60 s).
require_disks() {
	wait_for_disks "$1" "$2"
	case $? in
	1) cat "$3"; fail "serve exited before the disk appeared" 12 ;;
	2) cat "$3"; fail "no /dev/sdX within 60 s" 13 ;;
	esac
}

# wait_log_caught_up TARGET: wait until the dm-log-writes TARGET's log thread has caught up,
# its count of entries written to its log (its status's fourth field) the same for a second
# (0.2 s polls). Removing the target logs the writes no flush covered ahead of every entry the
# thread has not written yet (log_writes_dtr splices them at the head of its queue), which
# would put them before flushes and marks they came after: the power-cut scenarios remove it
# after this. Returns 0 once caught up, 1 when it is still logging after 60 s. Needs ./dmsetup.
wait_log_caught_up() {
	_last=$(./dmsetup status "$1" | awk '{print $4}')
	_same=0
	_polls=0
	while [ $_same -lt 5 ]; do
		[ $_polls -lt 300 ] || return 1
		sleep 0.2
		_now=$(./dmsetup status "$1" | awk '{print $4}')
		if [ "$_now" = "$_last" ]; then _same=$((_same + 1)); else _same=0 _last=$_now; fi
		_polls=$((_polls + 1))
	done
}
