# HIL scenario: SCSI conformance of the TCMU frontend with libiscsi's iscsi-test-cu (Debian's
# libiscsi-bin), run in the guest against LIO's iSCSI target on 127.0.0.1:3260, which exports
# `scst-accel serve --frontend tcmu` on QEMU's NVMe controller through VFIO (the NVMe engine,
# as in the tcmu scenario). Every suite of every family, destructive tests allowed (--dataloss,
# --allow-sanitize). One iscsi-test-cu run per suite, so the time of each is known; its
# verbose output goes to $HIL_SHARE/iscsi/<suite>.log and check-result.py parses them into
# pass/fail/skip per suite against tests/hil/iscsi-expected-failures.txt.
set -u
. ./common.sh
NAME=tcmu0
HBA=7
C=/sys/kernel/config/target
IQN=iqn.2026-12.org.scst-accel:$NAME
URL=iscsi://127.0.0.1/$IQN/0
OUT=$HIL_SHARE/iscsi
now() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "iscsi scenario: $1"; exit "${2:-1}"; }
command -v iscsi-test-cu >/dev/null ||
	fail "iscsi-test-cu is not in the guest: install libiscsi-bin on the host (tests/hil/hil.sh install)" 20
mount -t configfs none /sys/kernel/config 2>/dev/null
[ -d $C/core ] || fail "no $C/core: target_core_mod is not loaded" 10
# LIO keeps persistent reservations in <db_root>/pr/aptpl_<serial> and writes that file on
# every PERSISTENT RESERVE OUT, even without APTPL; a missing directory fails the command with
# NOT READY / LOGICAL UNIT COMMUNICATION FAILURE. db_root is /var/target when /etc/target did
# not exist when target_core_mod loaded (dmesg: "db_root: cannot open: /etc/target").
mkdir -p /var/target/pr /etc/target/pr
ifconfig lo 127.0.0.1 up 2>/dev/null || ip link set lo up
bind_vfio "$NVME_BDF" || fail "bind_vfio failed" 11
mkdir -p "$OUT"
scst-accel --log info serve --frontend tcmu --board "${HIL_BOARD:-qemu-nvme}" --pci "$NVME_BDF" \
	--size 32M --name $NAME --tcmu-hba $HBA --state-dir /tmp/state \
	--control-socket /tmp/scst-accel.sock --tcmu-no-loop --tcmu-iscsi 127.0.0.1:3260 \
	>"$HIL_SHARE/serve.log" 2>&1 &
SERVE=$!
i=0
while [ $i -lt 120 ] && ! grep -q 'serving ' "$HIL_SHARE/serve.log" 2>/dev/null; do
	kill -0 $SERVE 2>/dev/null || { cat "$HIL_SHARE/serve.log"; fail "serve exited before serving" 12; }
	sleep 0.5
	i=$((i + 1))
done
grep -q 'serving ' "$HIL_SHARE/serve.log" || { cat "$HIL_SHARE/serve.log"; fail "serve not serving within 60 s" 13; }
# The suites as iscsi-test-cu lists them (ALL.<suite>), all of them.
SUITES=$(iscsi-test-cu -l | grep -E '^ALL\.[^.]+$' | cut -d. -f2)
[ -n "$SUITES" ] || fail "iscsi-test-cu -l listed no suites" 21
t0=$(now)
: >"$OUT/times.txt"
for s in $SUITES; do
	ts=$(now)
	iscsi-test-cu --dataloss --allow-sanitize --verbose --test="ALL.$s" "$URL" >"$OUT/$s.log" 2>&1
	rc=$?
	echo "$s $rc $(awk "BEGIN { print $(now) - $ts }")" >>"$OUT/times.txt"
done
t_tests=$(awk "BEGIN { print $(now) - $t0 }")
echo "iscsi scenario: $(wc -l <"$OUT/times.txt") suites in $t_tests s; slowest:"
sort -k3 -n -r "$OUT/times.txt" | head -5
kill -TERM $SERVE
wait $SERVE
serve_rc=$?
tail -4 "$HIL_SHARE/serve.log"
left=$(ls -d $C/iscsi/iqn.* $C/core/user_* 2>/dev/null | tr '\n' ' ')
clean=true
[ -z "$left" ] || clean=false
cat >"$HIL_SHARE/result.json" <<EOF
{"scenario": "iscsi", "url": "$URL", "suites_dir": "iscsi", "tests_s": $t_tests,
 "serve_rc": $serve_rc, "configfs_clean": $clean}
EOF
cat "$HIL_SHARE/result.json"
exit 0
