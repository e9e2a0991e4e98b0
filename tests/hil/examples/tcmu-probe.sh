# Guest script: a TCMU user backstore (LIO's target_core_user) served by the handler's
# `tcmu_serve` example (RAM store), exported through tcm_loop, MB MiB written and read back with
# O_DIRECT through the kernel's own /dev/sdX and compared (docs/tcmu.md, "Against the real
# kernel"). Pass `--bin target/debug/examples/tcmu_serve`.
#
# Not a suite scenario (scenarios/tcmu.sh is, with `serve --frontend tcmu`): a probe of the
# example, kept for the kill -9 measurement (KILL_AFTER). The harness loads the target modules.
#
# Environment: RING_MB (command ring size, default 1: small, so the I/O wraps it), MB (MiB
# written and read back, default 16), SERVE_SECONDS (how long tcmu_serve runs, default 90),
# KILL_AFTER (if set: seconds into the write when tcmu_serve is killed with SIGKILL and a new
# one started on the same device, whose RAM store starts empty: the comparison then covers only
# what is written again after the restart).
set -u
RING_MB=${RING_MB:-1}
MB=${MB:-16}
SERVE_SECONDS=${SERVE_SECONDS:-90}
KILL_AFTER=${KILL_AFTER:-}
mount -t configfs none /sys/kernel/config 2>/dev/null
C=/sys/kernel/config/target
ls $C || { echo "no target configfs"; exit 10; }
D=$C/core/user_1/disk0
mkdir -p $D || exit 11
echo -n "dev_size=$((64*1024*1024))" > $D/control || exit 12
echo -n "dev_config=scstaccel/ram" > $D/control || exit 13
echo -n "cmd_ring_size_mb=$RING_MB" > $D/control || exit 13
echo 1 > $D/enable || exit 14
for u in /sys/class/uio/*; do echo "$u: $(cat $u/name) size $(cat $u/maps/map0/size)"; done
cat $D/attrib/hw_block_size $D/attrib/cmd_time_out 2>/dev/null
./tcmu_serve 1 disk0 512 131072 $SERVE_SECONDS > serve.log 2>&1 &
SERVE=$!
sleep 2
T=$C/loopback/naa.5001405000000001
mkdir -p $T/tpgt_1 || exit 15
echo naa.5001405000000002 > $T/tpgt_1/nexus || exit 17
mkdir -p $T/tpgt_1/lun/lun_0 || exit 15
ln -s $D $T/tpgt_1/lun/lun_0/disk0 || exit 16
i=0
while [ $i -lt 30 ] && ! ls /sys/block | grep -q '^sd'; do sleep 1; i=$((i+1)); done
ls /sys/block
SD=$(ls /sys/block | grep '^sd' | head -1)
[ -n "$SD" ] || { echo "no sd device"; cat serve.log; exit 18; }
cat /sys/block/$SD/size /sys/block/$SD/device/model /sys/block/$SD/device/vendor
i=0; while [ $i -lt 10 ] && [ ! -b /dev/$SD ]; do sleep 1; i=$((i+1)); done
N=$((MB * 256))
dd if=/dev/urandom of=/tmp/pattern bs=4096 count=$N 2>/dev/null
date
if [ -n "$KILL_AFTER" ]; then
  dd if=/tmp/pattern of=/dev/$SD bs=4096 count=$N seek=100 oflag=direct > dd-write.log 2>&1 &
  DD=$!
  sleep "$KILL_AFTER"
  kill -9 $SERVE; wait $SERVE; echo "killed tcmu_serve at $(date)"; cat serve.log
  ./tcmu_serve 1 disk0 512 131072 $SERVE_SECONDS > serve.log 2>&1 &
  SERVE=$!
  echo "restarted tcmu_serve at $(date)"
  wait $DD; echo "dd write rc $?"; tail -2 dd-write.log
  # The new store is empty: write everything again so the comparison is meaningful.
  dd if=/tmp/pattern of=/dev/$SD bs=4096 count=$N seek=100 oflag=direct 2>&1 | tail -1
else
  dd if=/tmp/pattern of=/dev/$SD bs=4096 count=$N seek=100 oflag=direct 2>&1 | tail -1
fi
date
dd if=/dev/$SD of=/tmp/back bs=4096 count=$N skip=100 iflag=direct 2>&1 | tail -1
date
md5sum /tmp/pattern /tmp/back
A=$(md5sum < /tmp/pattern); B=$(md5sum < /tmp/back)
echo 1 > /sys/block/$SD/device/delete
rm $T/tpgt_1/lun/lun_0/disk0; rmdir $T/tpgt_1/lun/lun_0; rmdir $T/tpgt_1 $T 2>&1
wait $SERVE
cat serve.log
dmesg | grep -i -E "tcmu|target|loopback|sd " | tail -20
rmdir $D; rmdir $C/core/user_1
[ "$A" = "$B" ] && echo "VERIFY OK" || { echo "VERIFY MISMATCH"; exit 19; }
