# HIL scenario: EXTENDED COPY onto QEMU's NVMe controller through VFIO (docs/xcopy.md). QEMU
# 7.2's controller reports Copy (ONCS bit 8, OCFS format 0), so the loopback copy manager's
# EXT_COPY_REMAP segments become NVMe Copy commands; `demo --clone` also clones by READ + WRITE
# through the initiator and reads both clones back against the source.
set -e
. ./common.sh
bind_vfio "$NVME_BDF"
scst-accel demo $demo_args --clone 8M --json >"$HIL_SHARE/result.json"
