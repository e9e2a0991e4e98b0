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
