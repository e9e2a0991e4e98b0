# HIL scenario: tear the handler down halfway through the run with the workload still running
# (issue 4's teardown, on a real PCIe function behind a real IOMMU).
set -e
. ./common.sh
bind_vfio "$NVME_BDF"
scst-accel demo $demo_args --duration "${HIL_DURATION:-8s}" --queue-depth 64 --teardown-under-load \
	--json >"$HIL_SHARE/result.json"
