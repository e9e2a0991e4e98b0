# The TCMU data area and VFIO (docs/tcmu.md, "VFIO straight into the data area"): serve a RAM
# backstore, do some I/O, kill -9 the server (the UIO device is opened exclusively), then
# tcmu_vfio_probe maps pieces of the data area for the NVMe function. Run with
#   tests/hil/hil.sh run --out DIR --bin target/release/scst-accel \
#     --bin target/release/examples/tcmu_vfio_probe --bin tests/hil/scenarios/common.sh \
#     -- tests/hil/examples/tcmu-vfio-probe.sh
set -u
. ./common.sh
bind_vfio "$NVME_BDF"
mount -t configfs none /sys/kernel/config 2>/dev/null
scst-accel --log warn serve --frontend tcmu --board ram --size 32M --name probe0 --tcmu-hba 7 \
	--state-dir /tmp/state --control-socket /tmp/scst-accel.sock >"$HIL_SHARE/serve.log" 2>&1 &
serve=$!
wait_for_disks 1 $serve
sd=$SD
echo "probe: /dev/$sd"
dd if=/dev/urandom of=/dev/$sd bs=64k count=16 oflag=direct 2>&1 | tail -1
dd if=/dev/$sd of=/dev/null bs=64k count=16 iflag=direct 2>&1 | tail -1
for u in /sys/class/uio/uio*; do echo "$(basename $u) name=$(cat $u/name) map0=$(cat $u/maps/map0/size)"; done
u=$(ls -d /sys/class/uio/uio* | head -1)
# The UIO device is opened exclusively (tcmu_open): the server goes first, the kernel keeps the
# ring and the data pages its commands allocated.
kill -9 $serve; wait $serve 2>/dev/null
tcmu_vfio_probe /dev/$(basename $u) "$(cat $u/maps/map0/size)" "$NVME_BDF"
echo "probe rc $?"
dmesg | tail -5
scst-accel --log warn serve --frontend tcmu --board ram --size 32M --name probe0 --tcmu-hba 7 \
	--state-dir /tmp/state --control-socket /tmp/scst-accel.sock --tcmu-adopt >"$HIL_SHARE/serve2.log" 2>&1 &
serve=$!
sleep 3
kill -TERM $serve; wait $serve; echo "adopting serve rc $? (cleans configfs)"
