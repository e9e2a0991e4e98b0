# Guest script: the kernel-driver peer benchmark. fio (passed with --bin /usr/bin/fio) against
# the namespace on the kernel nvme driver; JSON results land in the share as fio-*.json.
set -e
dev=$(bind_nvme "$NVME_BDF")
echo "benchmarking $dev ($(cat /sys/block/${dev#/dev/}/size) sectors)"
common="--filename=$dev --ioengine=libaio --direct=1 --time_based --runtime=${FIO_RUNTIME:-10} --output-format=json"
fio --name=randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 $common \
	--output="$HIL_SHARE/fio-randread-4k-qd32.json"
fio --name=seqread-128k-qd8 --rw=read --bs=128k --iodepth=8 $common \
	--output="$HIL_SHARE/fio-seqread-128k-qd8.json"
for f in "$HIL_SHARE"/fio-*.json; do
	echo "$(basename "$f"): $(grep -m1 '"iops"' "$f") $(grep -m1 '"bw"' "$f")"
done
