# HIL scenario: a controller reset (CC.EN 1 -> 0 -> 1, every I/O queue re-created) halfway
# through the run, with I/O in flight; the run goes on and every command is answered.
set -e
. ./common.sh
bind_vfio "$NVME_BDF"
scst-accel demo $demo_args --duration "${HIL_DURATION:-8s}" --queue-depth 32 --reset-during-load \
	--json >"$HIL_SHARE/result.json"
