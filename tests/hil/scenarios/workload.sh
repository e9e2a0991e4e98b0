# HIL scenario: a verified workload through the loopback kernel on the generic `nvme` board,
# after `diag` has opened, dumped and released the controller.
set -e
. ./common.sh
bind_vfio "$NVME_BDF"
scst-accel diag --board nvme --pci "$NVME_BDF" --json >"$HIL_SHARE/diag.json"
HIL_BOARD=nvme . ./common.sh
scst-accel demo $demo_args --duration "${HIL_DURATION:-8s}" --queue-depth 32 --json >"$HIL_SHARE/result.json"
