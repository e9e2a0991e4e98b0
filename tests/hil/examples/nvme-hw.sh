# Guest script: bind the NVMe function to vfio-pci and run the boards crate's hardware test
# (boards/tests/nvme_hw.rs: bring-up, verified I/O, ABORT, error log, recovery, shutdown)
# against it. Pass the binary with `--bin` (cargo test -p scst-accel-boards --test nvme_hw
# --no-run: the nvme_hw-HASH executable).
set -e
bin=$(ls "$HIL_SHARE"/nvme_hw-* | head -n1)
bind_vfio "$NVME_BDF"
RUST_LOG=info SCST_ACCEL_NVME_PCI=$NVME_BDF "$bin" --nocapture --test-threads=1
