# Guest script: bind the NVMe function to vfio-pci and run the hal crate's unit-test binary's VFIO
# tests against it (the real-device test opens SCST_ACCEL_VFIO_DEVICE). Pass the binary with
# `--bin` (cargo test -p scst-accel-hal --no-run: the scst_accel_hal-HASH lib test executable).
set -e
bin=$(ls "$HIL_SHARE"/scst_accel_hal-* | head -n1)
bind_vfio "$NVME_BDF"
ls -l /dev/vfio
SCST_ACCEL_VFIO_DEVICE=$NVME_BDF "$bin" --nocapture --test-threads=1 vfio
