# HIL peer benchmark (issue 5 §4), one guest, one emulated controller: Linux's nvme driver (fio,
# libaio, O_DIRECT on /dev/nvme0n1) against scst-accel's NVMe engine alone (bench's store layer)
# and through the loopback kernel (demo: SCSI engine, handler, every byte verified), 4 KiB random
# read QD32 and 128 KiB sequential read QD8, over the same first 64 MiB.
set -e
. ./common.sh
rt=${HIL_BENCH_SECONDS:-5}
rounds=${HIL_BENCH_ROUNDS:-3}
# 2 MiB huge pages for the engine's command buffers (the SGV pool's arenas use them when the
# kernel has them, dma/src/region.rs), as an appliance may reserve them. Off by default: on a
# quiet host 64 of them changed nothing measurable (2026-12-04, 5 rounds each: medians 3.50 and
# 1.39 without, 2.90 and 1.35 with; docs/performance.md).
echo "${HIL_BENCH_HUGEPAGES:-0}" >/proc/sys/vm/nr_hugepages
echo "bench: $(cat /proc/sys/vm/nr_hugepages) huge pages of 2 MiB reserved"
# The guest shares the host's CPUs (TCG): its speed drifts with the host's load, so the kernel
# driver and the engine alone alternate in rounds and each round gives its own ratio.
r=1
while [ $r -le $rounds ]; do
	dev=$(bind_nvme "$NVME_BDF")
	common="--filename=$dev --ioengine=libaio --direct=1 --time_based --runtime=$rt --size=64M --output-format=json"
	fio --name=randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 $common --output="$HIL_SHARE/kernel-randread-$r.json"
	fio --name=seqread-128k-qd8 --rw=read --bs=128k --iodepth=8 $common --output="$HIL_SHARE/kernel-seqread-$r.json"
	bind_vfio "$NVME_BDF"
	# The engine alone (bench's store layer: requests straight to the NVMe queues through VFIO,
	# no SCSI, no kernel model): the like-for-like comparison with fio on the kernel's driver.
	scst-accel bench --boards qemu-nvme --pci "$NVME_BDF" --layers store --size 64M --duration "${rt}s" \
		--workloads 4k-randread-qd32,128k-seqread-qd8 --json >"$HIL_SHARE/engine-$r.json"
	r=$((r + 1))
done
demo_args="--board qemu-nvme --pci $NVME_BDF --size 64M --log warn --rw read --duration ${rt}s"
scst-accel demo $demo_args --pattern random --bs 4k --queue-depth 32 --json >"$HIL_SHARE/accel-randread.json"
scst-accel demo $demo_args --pattern sequential --bs 128k --queue-depth 8 --json >"$HIL_SHARE/accel-seqread.json"
# Through a real kernel SCSI path: LIO's target_core_user + tcm_loop serve the NVMe engine as
# /dev/sdX (`serve --frontend tcmu`), the initiator's queue depth raised to the workload's (the
# SCSI midlayer's default would cap it), and the same fio jobs on it. Skipped, loudly, when the
# guest kernel has no target_core_user.
mount -t configfs none /sys/kernel/config 2>/dev/null
if [ -d /sys/kernel/config/target/core ]; then
	scst-accel --log warn serve --frontend tcmu --board qemu-nvme --pci "$NVME_BDF" --size 64M \
		--name bench0 --state-dir /tmp/state --control-socket /tmp/scst-accel.sock \
		>"$HIL_SHARE/serve-tcmu.log" 2>&1 &
	serve=$!
	sd=
	if wait_for_disks 1 $serve; then
		sd=$SD
		echo 32 >"/sys/block/$sd/device/queue_depth" 2>/dev/null
		echo "bench: /dev/$sd through TCMU, queue_depth $(cat /sys/block/$sd/device/queue_depth)"
		common="--filename=/dev/$sd --ioengine=libaio --direct=1 --time_based --runtime=$rt --size=64M --output-format=json"
		fio --name=randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 $common --output="$HIL_SHARE/tcmu-randread.json"
		fio --name=seqread-128k-qd8 --rw=read --bs=128k --iodepth=8 $common --output="$HIL_SHARE/tcmu-seqread.json"
	else
		echo "bench: SKIPPED the TCMU path: no /dev/sdX (serve ended, or 60 s passed: serve-tcmu.log)"
	fi
	kill -TERM $serve 2>/dev/null
	wait $serve
	echo "bench: serve --frontend tcmu exited $?"
else
	echo "bench: SKIPPED the TCMU path: no /sys/kernel/config/target/core (target_core_mod not loaded)"
fi
