# HIL scenario: `scst-accel serve --frontend tcmu` on QEMU's NVMe controller through VFIO,
# exported by LIO (target_core_user + tcm_loop) as the kernel's own /dev/sdX. Checks: the
# kernel's scan saw the disk (vendor, model, capacity from INQUIRY and READ CAPACITY; sg_inq
# and sg_readcap too when sg3-utils is in the guest), TCMU_MB MiB written and read back with
# O_DIRECT and compared; serve killed with SIGKILL during a write and restarted with
# --tcmu-adopt (the write must finish, its data verified); then a SIGTERM while a writer runs: serve must exit 0 within its
# budget, remove every configfs object, and the writer must end (with an error: its disk went
# away) instead of hanging. The kernel log is checked by hil.sh; result.json by check-result.py.
set -u
. ./common.sh
MB=${TCMU_MB:-8}
NAME=tcmu0
HBA=7
C=/sys/kernel/config/target
now() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "tcmu scenario: $1"; exit "${2:-1}"; }
mount -t configfs none /sys/kernel/config 2>/dev/null
[ -d $C/core ] || fail "no $C/core: target_core_mod is not loaded" 10
bind_vfio "$NVME_BDF" || fail "bind_vfio failed" 11
start_serve() { # $1: log file; further arguments go to serve
	log=$1
	shift
	scst-accel --log info serve --frontend tcmu --board "${HIL_BOARD:-qemu-nvme}" --pci "$NVME_BDF" \
		--size 32M --name $NAME --tcmu-hba $HBA --state-dir /tmp/state \
		--control-socket /tmp/scst-accel.sock "$@" >"$log" 2>&1 &
	SERVE=$!
}
start_serve "$HIL_SHARE/serve-first.log"
t0=$(now)
require_disks 1 $SERVE "$HIL_SHARE/serve-first.log"
t_disk=$(now)
vendor=$(tr -d ' \n' </sys/block/$SD/device/vendor)
model=$(tr -d ' \n' </sys/block/$SD/device/model)
sectors=$(cat /sys/block/$SD/size)
lbs=$(cat /sys/block/$SD/queue/logical_block_size)
echo "tcmu scenario: /dev/$SD: vendor $vendor model $model, $sectors sectors of 512, logical block $lbs"
sg=skipped
if command -v sg_inq >/dev/null && command -v sg_readcap >/dev/null && command -v sg_vpd >/dev/null; then
	# INQUIRY names the engine's vendor, the device identification VPD page answers, READ
	# CAPACITY agrees with what sd read.
	sg=failed
	sg_inq "/dev/$SD" >/tmp/sg_inq.txt 2>&1 && grep -q "$vendor" /tmp/sg_inq.txt &&
		sg_vpd --page=di "/dev/$SD" >/tmp/sg_vpd.txt 2>&1 &&
		sg_readcap "/dev/$SD" >/tmp/sg_readcap.txt 2>&1 &&
		grep -q "Last LBA=$((sectors * 512 / lbs - 1))" /tmp/sg_readcap.txt && sg=ok
	cat /tmp/sg_inq.txt /tmp/sg_vpd.txt /tmp/sg_readcap.txt 2>/dev/null | grep -E "Vendor|Product|designat|Last LBA|Logical block length|NAA|EUI" | head -12
	echo "tcmu scenario: sg_inq/sg_vpd/sg_readcap: $sg"
else
	echo "tcmu scenario: SKIPPED sg_inq/sg_vpd/sg_readcap: sg3-utils is not in the guest (tests/hil/hil.sh install adds it; sysfs vendor/model/size checked instead)"
fi
N=$((MB * 256))
dd if=/dev/urandom of=/tmp/pattern bs=4096 count=$N 2>/dev/null
t_w=$(now)
dd if=/tmp/pattern of=/dev/$SD bs=4096 count=$N seek=16 oflag=direct 2>&1 | tail -1
t_r=$(now)
dd if=/dev/$SD of=/tmp/back bs=4096 count=$N skip=16 iflag=direct 2>&1 | tail -1
t_end=$(now)
A=$(md5sum </tmp/pattern | cut -d' ' -f1)
B=$(md5sum </tmp/back | cut -d' ' -f1)
verified=false
[ "$A" = "$B" ] && verified=true
write_s=$(awk "BEGIN { print $t_r - $t_w }")
read_s=$(awk "BEGIN { print $t_end - $t_r }")
echo "tcmu scenario: $MB MiB written in $write_s s, read in $read_s s; verified $verified"
# kill -9 under I/O, then a new serve that adopts the backstore and its ring: the writer
# (8 MiB more, another region) must finish without error, and its data must be on the disk
# (the NVMe namespace keeps what the dead handler wrote).
dd if=/dev/urandom of=/tmp/pattern2 bs=4096 count=$N 2>/dev/null
dd if=/tmp/pattern2 of=/dev/$SD bs=4096 count=$N seek=$((16 + N)) oflag=direct >/tmp/dd-kill.log 2>&1 &
KW=$!
sleep 2
kill -9 $SERVE
wait $SERVE 2>/dev/null
t_kill=$(now)
echo "tcmu scenario: serve killed with SIGKILL at $t_kill, writer running: $(kill -0 $KW 2>/dev/null && echo yes || echo no)"
start_serve "$HIL_SHARE/serve.log" --tcmu-adopt
i=0
while kill -0 $KW 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
killed_writer_hung=false
kill -0 $KW 2>/dev/null && { killed_writer_hung=true; kill -9 $KW; }
wait $KW
killed_writer_rc=$?
t_kw=$(now)
tail -1 /tmp/dd-kill.log
dd if=/dev/$SD of=/tmp/back2 bs=4096 count=$N skip=$((16 + N)) iflag=direct 2>&1 | tail -1
A2=$(md5sum </tmp/pattern2 | cut -d' ' -f1)
B2=$(md5sum </tmp/back2 | cut -d' ' -f1)
restart_verified=false
[ "$A2" = "$B2" ] && restart_verified=true
restart_s=$(awk "BEGIN { print $t_kw - $t_kill }")
echo "tcmu scenario: after kill -9: writer rc $killed_writer_rc, finished $restart_s s after the kill, data verified $restart_verified"
grep -E 'adopt|ring RingState' "$HIL_SHARE/serve.log" | tail -2
# The stop under load: a writer in flight when SIGTERM arrives.
# (Rewrites the disk's first 32 MiB until a write fails: the disk went away.)
(while dd if=/dev/zero of=/dev/$SD bs=65536 count=512 oflag=direct 2>>/tmp/dd-load.log; do :; done) &
LOAD=$!
sleep 2
t_stop=$(now)
kill -TERM $SERVE
wait $SERVE
serve_rc=$?
t_stopped=$(now)
# The writer must end on its own now (its disk is gone); bounded wait, then it counts as hung.
i=0
while kill -0 $LOAD 2>/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
writer_hung=false
kill -0 $LOAD 2>/dev/null && { writer_hung=true; kill -9 $LOAD; }
tail -2 /tmp/dd-load.log
left=$(ls -d $C/core/user_* $C/loopback/naa.* 2>/dev/null | tr '\n' ' ')
configfs_clean=true
[ -z "$left" ] || configfs_clean=false
echo "tcmu scenario: serve exited $serve_rc; configfs left: ${left:-nothing}; writer hung: $writer_hung"
tail -5 "$HIL_SHARE/serve.log"
stop_ms=$(awk "BEGIN { print ($t_stopped - $t_stop) * 1000 }")
disk_s=$(awk "BEGIN { print $t_disk - $t0 }")
drained=false
grep -q 'drained in' "$HIL_SHARE/serve.log" && drained=true
# iSCSI: the disk exported on 127.0.0.1:3260 instead of tcm_loop. No initiator in the guest:
# the target's creation, its listening portal and its removal are what is checked.
ifconfig lo 127.0.0.1 up 2>/dev/null || ip link set lo up
start_serve "$HIL_SHARE/serve-iscsi.log" --tcmu-no-loop --tcmu-iscsi 127.0.0.1:3260
IQN=iqn.2026-12.org.scst-accel:$NAME
i=0
while [ $i -lt 60 ] && ! grep -q 'serving ' "$HIL_SHARE/serve-iscsi.log"; do
	kill -0 $SERVE 2>/dev/null || break
	sleep 0.5
	i=$((i + 1))
done
iscsi_portal=false
# 127.0.0.1:3260 listening: 0100007F:0CBC in state 0A in /proc/net/tcp.
[ -d "$C/iscsi/$IQN/tpgt_1/np/127.0.0.1:3260" ] && [ "$(cat "$C/iscsi/$IQN/tpgt_1/enable")" = 1 ] &&
	grep -q '0100007F:0CBC 00000000:0000 0A' /proc/net/tcp && iscsi_portal=true
kill -TERM $SERVE
wait $SERVE
iscsi_rc=$?
iscsi_left=$(ls -d $C/iscsi/iqn.* $C/core/user_* 2>/dev/null | tr '\n' ' ')
iscsi_clean=true
[ -z "$iscsi_left" ] || iscsi_clean=false
grep -q '0100007F:0CBC 00000000:0000 0A' /proc/net/tcp && iscsi_clean=false
echo "tcmu scenario: iSCSI portal listening $iscsi_portal; serve exited $iscsi_rc; left: ${iscsi_left:-nothing}"
tail -3 "$HIL_SHARE/serve-iscsi.log"
# Several disks from a configuration file (frontend = "tcmu"): two RAM disks, each LUN of one
# tcm_loop target; then dev_size of the second written through configfs (the kernel's
# RECONFIG_DEVICE event, followed by serve's netlink listener): after a rescan, sd's size and
# READ CAPACITY (sg_readcap, when there) must show the new size; `scst-accel status` must list
# both disks; the first disk's backstore removed through configfs stops that disk alone; SIGTERM
# must leave configfs empty.
cat >/tmp/multi.toml <<EOM
[service]
frontend = "tcmu"
state_dir = "/tmp/state"
control_socket = "/tmp/scst-accel-multi.sock"
[service.tcmu]
hba = 8
[[disk]]
name = "m0"
board = "ram"
size = "16M"
[[disk]]
name = "m1"
board = "ram"
size = "16M"
EOM
scst-accel --log info serve --config /tmp/multi.toml >"$HIL_SHARE/serve-multi.log" 2>&1 &
SERVE=$!
multi_disks=0
SD1=
i=0
while [ $i -lt 120 ]; do
	multi_disks=0
	for d in /sys/block/sd*; do
		[ -e "$d/device/model" ] || continue
		m=$(tr -d ' \n' <"$d/device/model")
		case $m in m0) multi_disks=$((multi_disks + 1)) ;; m1) multi_disks=$((multi_disks + 1)) SD1=${d##*/} ;; esac
	done
	[ $multi_disks = 2 ] && grep -q 'serving 2 of 2 disks' "$HIL_SHARE/serve-multi.log" && break
	kill -0 $SERVE 2>/dev/null || break
	sleep 0.5
	i=$((i + 1))
done
multi_status=false
scst-accel status --socket /tmp/scst-accel-multi.sock >/tmp/multi-status.txt 2>&1 &&
	grep -q m0 /tmp/multi-status.txt && grep -q m1 /tmp/multi-status.txt && multi_status=true
resized_sectors=0
resize_readcap=skipped
resize_ua=false
if [ -n "$SD1" ]; then
	echo $((32 << 20)) >$C/core/user_8/m1/attrib/dev_size
	sleep 1
	echo 1 >/sys/block/$SD1/device/rescan
	sleep 1
	resized_sectors=$(cat /sys/block/$SD1/size)
	# The rescan's first command was answered CAPACITY DATA HAS CHANGED (and sd retried it).
	grep -q 'unit attention CAPACITY DATA HAS CHANGED' "$HIL_SHARE/serve-multi.log" && resize_ua=true
	if command -v sg_readcap >/dev/null; then
		resize_readcap=failed
		sg_readcap "/dev/$SD1" >/tmp/sg_readcap-m1.txt 2>&1 && grep -q "Last LBA=65535" /tmp/sg_readcap-m1.txt && resize_readcap=ok
		grep "Last LBA" /tmp/sg_readcap-m1.txt
	fi
fi
# The kernel removes m0's backstore (its LUN first, as configfs wants): serve must stop m0 alone
# (REMOVED_DEVICE, or its worker seeing the device go), show it failed, and keep serving m1.
removed_one=false
other_serves=false
W=$(ls -d $C/loopback/naa.* 2>/dev/null | head -1)
if [ -n "$SD1" ] && [ -n "$W" ] && rm "$W/tpgt_1/lun/lun_0/m0" && rmdir "$W/tpgt_1/lun/lun_0" &&
	rmdir $C/core/user_8/m0; then
	i=0
	while [ $i -lt 20 ] && ! grep -q 'disk m0: stopped' "$HIL_SHARE/serve-multi.log"; do
		sleep 0.5
		i=$((i + 1))
	done
	scst-accel status --socket /tmp/scst-accel-multi.sock >/tmp/multi-status2.txt 2>&1
	cat /tmp/multi-status2.txt
	grep m0 /tmp/multi-status2.txt | grep -q failed && grep m1 /tmp/multi-status2.txt | grep -q serving &&
		removed_one=true
	dd if=/dev/$SD1 of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null && other_serves=true
fi
kill -TERM $SERVE
wait $SERVE
multi_rc=$?
multi_left=$(ls -d $C/core/user_* $C/loopback/naa.* 2>/dev/null | tr '\n' ' ')
multi_clean=true
[ -z "$multi_left" ] || multi_clean=false
echo "tcmu scenario: config file: $multi_disks disks, status lists both: $multi_status; m1 after dev_size=32M: $resized_sectors sectors, unit attention $resize_ua, sg_readcap $resize_readcap; m0's backstore removed: m0 stopped alone $removed_one, m1 still reads $other_serves; serve exited $multi_rc; left: ${multi_left:-nothing}"
grep -E "serving|dev_size|resized|unit attention|netlink|TCM-USER|removing|removed|m0: stopped" "$HIL_SHARE/serve-multi.log" | head -14
cat >"$HIL_SHARE/result.json" <<EOF
{"scenario": "tcmu", "device": "$SD", "vendor": "$vendor", "model": "$model",
 "sectors": $sectors, "logical_block_size": $lbs, "sg3_utils": "$sg",
 "mib": $MB, "verified": $verified, "write_s": $write_s, "read_s": $read_s,
 "disk_appeared_s": $disk_s, "serve_rc": $serve_rc, "stop_ms": $stop_ms,
 "stop_budget_ms": 15000, "drained": $drained, "configfs_clean": $configfs_clean,
 "writer_hung": $writer_hung, "killed_writer_rc": $killed_writer_rc,
 "killed_writer_hung": $killed_writer_hung, "restart_verified": $restart_verified,
 "killed_writer_done_after_kill_s": $restart_s, "iscsi_portal": $iscsi_portal,
 "iscsi_rc": $iscsi_rc, "iscsi_clean": $iscsi_clean, "multi_disks": $multi_disks,
 "multi_status": $multi_status, "resized_sectors": $resized_sectors,
 "resize_readcap": "$resize_readcap", "resize_ua": $resize_ua, "removed_one": $removed_one,
 "other_serves": $other_serves, "multi_rc": $multi_rc, "multi_clean": $multi_clean}
EOF
cat "$HIL_SHARE/result.json"
[ "$verified" = true ] || exit 19
exit 0
