# Sourced by the HIL scenarios (guest side, busybox sh): the demo's common arguments.
# HIL_BOARD: qemu-nvme (the board definition of QEMU's controller) or nvme (any controller).
# The demo's region is the first 32 MiB of the namespace: enough for verified random I/O, small
# enough to prefill quickly under TCG.
demo_args="--board ${HIL_BOARD:-qemu-nvme} --pci $NVME_BDF --size 32M --log ${HIL_LOG:-info}"
