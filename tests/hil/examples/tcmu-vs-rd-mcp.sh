# Guest script: the peer comparison of issue 14. The same tcm_loop LUN and the same fio job
# (4 KiB random read, QD 32, libaio, O_DIRECT, FIO_RUNTIME s, default 10) against LIO's
# in-kernel RAM disk (rd_mcp) and against `scst-accel serve --frontend tcmu --board ram`, one
# after the other in one guest. Per run: IOPS from fio, and CPU per I/O as all non-idle CPU
# time of the guest (/proc/stat: user + nice + system + irq + softirq) during the run divided
# by the I/Os (fio's own CPU is in both). JSON in share/fio-rd_mcp.json, share/fio-tcmu.json,
# the CPU figures in share/peer.txt. Not a suite scenario (TCG: ratios, not absolute figures).
#
#   tests/hil/hil.sh run --out DIR --bin target/release/scst-accel --bin /usr/bin/fio \
#       -- tests/hil/examples/tcmu-vs-rd-mcp.sh
set -u
RT=${FIO_RUNTIME:-10}
C=/sys/kernel/config/target
mount -t configfs none /sys/kernel/config 2>/dev/null
[ -d $C/core ] || { echo "no $C/core"; exit 10; }
ifconfig lo 127.0.0.1 up 2>/dev/null
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
wait_sd() {
	i=0
	while [ $i -lt 120 ]; do
		SD=$(ls /sys/block | grep '^sd' | head -1)
		[ -n "$SD" ] && [ -b "/dev/$SD" ] && return 0
		sleep 0.5
		i=$((i + 1))
	done
	return 1
}
measure() { # $1: label
	b0=$(busy)
	fio --name="$1" --filename="/dev/$SD" --rw=randread --bs=4k --iodepth=32 --ioengine=libaio \
		--direct=1 --runtime="$RT" --time_based --size=60m --output-format=json \
		--output="$HIL_SHARE/fio-$1.json" || echo "fio $1 failed"
	b1=$(busy)
	ios=$(grep -m1 '"total_ios"' "$HIL_SHARE/fio-$1.json" | tr -dc '0-9')
	iops=$(grep -m1 '"iops"' "$HIL_SHARE/fio-$1.json" | sed 's/.*: *//; s/,//')
	hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
	us=$(awk "BEGIN { if ($ios > 0) printf \"%.1f\", ($b1 - $b0) * 1000000 / $hz / $ios; else print 0 }")
	echo "$1: $ios I/Os, $iops IOPS, $us us of CPU per I/O" | tee -a "$HIL_SHARE/peer.txt"
}
: >"$HIL_SHARE/peer.txt"
# 1. LIO's rd_mcp (64 MiB) behind tcm_loop.
R=$C/core/rd_mcp_1/rd0
T=$C/loopback/naa.5001405000000100
mkdir -p $R && echo -n "rd_pages=16384" >$R/control && echo 1 >$R/enable || exit 11
mkdir -p $T/tpgt_1/lun/lun_0 && echo naa.5001405000000101 >$T/tpgt_1/nexus &&
	ln -s $R $T/tpgt_1/lun/lun_0/rd0 || exit 12
wait_sd || exit 13
echo "rd_mcp: /dev/$SD $(cat /sys/block/$SD/device/model)"
measure rd_mcp
rm $T/tpgt_1/lun/lun_0/rd0
rmdir $T/tpgt_1/lun/lun_0 $T/tpgt_1 $T $R $C/core/rd_mcp_1
i=0
while ls /sys/block | grep -q '^sd' && [ $i -lt 20 ]; do sleep 0.5; i=$((i + 1)); done
# 2. scst-accel's TCMU frontend on its RAM store (64 MiB) behind tcm_loop.
scst-accel --log info serve --frontend tcmu --board ram --size 64M --name ram0 \
	--state-dir /tmp/state --control-socket /tmp/scst-accel.sock >"$HIL_SHARE/serve.log" 2>&1 &
SERVE=$!
wait_sd || { cat "$HIL_SHARE/serve.log"; exit 14; }
echo "tcmu: /dev/$SD $(cat /sys/block/$SD/device/model)"
measure tcmu
kill -TERM $SERVE
wait $SERVE
echo "serve exited $?"
tail -3 "$HIL_SHARE/serve.log"
cat "$HIL_SHARE/peer.txt"
