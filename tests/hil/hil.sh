#!/usr/bin/env bash
# QEMU hardware-in-the-loop harness: boots a q35 guest (TCG) with an emulated VT-d IOMMU and NVMe
# controller, runs a host script inside it with host-built binaries from a 9p share, and checks
# the guest kernel log for DMAR faults, VFIO warnings and oopses. See README.md in this folder
# and docs/design/vm-lab.md for the recipe.
#
#   hil.sh install                    apt-get install what is missing (root, Debian 12)
#   hil.sh check                      exit 0 if a guest can run here, else 3 and one line of why
#   hil.sh run --out DIR [--timeout SECS] [--disk-mb N] [--mem-mb N] [--bin PATH]... \
#              [--expect-dmar] -- GUEST_SCRIPT
#   hil.sh check-log [--expect-dmar] FILE...
#   hil.sh initramfs                  build (or reuse) the cached initramfs and print its path
#
# Exit codes of `run`: the guest script's own exit code; 124 the guest did not finish in time;
# 5 the kernel-log check failed; 6 the guest never reported an exit code (boot failure, panic);
# 2 bad usage or a host-side setup error; 3 QEMU cannot run here (as `check`); 130 interrupted.
set -euo pipefail

HIL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HIL_DIR/../.." && pwd)
CACHE_DIR=${HIL_CACHE_DIR:-$REPO/target/hil}
QEMU=${HIL_QEMU:-qemu-system-x86_64}
BUSYBOX=${HIL_BUSYBOX:-/bin/busybox}
# libiscsi-bin: iscsi-test-cu, libiscsi's SCSI conformance suite (the iscsi scenario); dmsetup:
# the power-cut scenario's device-mapper tables; e2fsprogs: mkfs.ext4 for power-cut-fs.
PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static fio kmod cpio sg3-utils libiscsi-bin dmsetup
	e2fsprogs)
# Guest modules; their dependencies come from `modprobe --show-depends`. vfio_iommu_type1 is
# named explicitly because busybox modprobe ignores the soft dependency vfio-pci has on it.
# The LIO modules serve the TCMU scenario (LIO's target core, its user backstore, the local
# tcm_loop target and the SCSI disk driver for the /dev/sdX it creates, the iSCSI target).
# crc32c_generic: iscsi_target_mod allocates the crc32c hash for every login (digests), through
# the crypto API, which no module dependency names; without it each login fails
# ("iscsi_login_setup_crypto() failed").
# dm-log-writes (with dm-mod, whose linear target is built in) logs the writes, FUA writes and
# flushes the power-cut scenario's device is sent; ext4 and loop: power-cut-fs makes an ext4 on
# it, and mounts each rebuilt state through a loop device.
GUEST_MODULES=(nvme-core nvme vfio vfio_iommu_type1 vfio-pci virtio_pci 9pnet_virtio 9p
	configfs target_core_mod uio target_core_user tcm_loop sd_mod iscsi_target_mod crc32c_generic
	dm-log-writes ext4 loop)
# Kernel-log lines that fail a run (extended regular expressions, matched case-sensitively).
# QEMU's own VT-d model reports each blocked DMA on its stderr too ("translation failure"),
# including those the guest never logs because its fault recording registers were full.
DMAR_RE='DMAR:.*fault|DMAR: \[DMA|vtd_iommu_translate: detected translation failure'
BAD_RE='vfio.*WARNING|WARNING:.*vfio|Oops|BUG:|kernel BUG|Kernel panic|general protection fault|Call Trace:'

EXIT_USAGE=2
EXIT_UNAVAILABLE=3
EXIT_LOG=5
EXIT_NO_REPORT=6
EXIT_TIMEOUT=124

log() { echo "hil: $*" >&2; }
fail() {
	log "error: $*"
	exit "$EXIT_USAGE"
}

# ---------------------------------------------------------------------------------------------
# install / check

cmd_install() {
	[[ $(id -u) -eq 0 ]] || fail "install needs root (apt-get)"
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
			missing+=("$p")
		fi
	done
	if [[ ${#missing[@]} -eq 0 ]]; then
		echo "hil install: nothing to install (${PACKAGES[*]} present)"
		return 0
	fi
	echo "hil install: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
	echo "hil install: installed ${missing[*]}"
}

# The newest installed kernel, or $HIL_KERNEL; sets KERNEL and KVER.
find_kernel() {
	if [[ -n ${HIL_KERNEL:-} ]]; then
		KERNEL=$HIL_KERNEL
	else
		KERNEL=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
	fi
	[[ -n $KERNEL && -e $KERNEL ]] || return 1
	[[ -r $KERNEL ]] || return 2
	KVER=${KVER:-$(basename "$KERNEL")}
	KVER=${KVER#vmlinuz-}
}

# Prints one line saying why a guest cannot run here and returns 1, or returns 0.
preflight() {
	local v
	command -v "$QEMU" >/dev/null || { echo "$QEMU not found (run: tests/hil/hil.sh install)"; return 1; }
	v=$("$QEMU" --version 2>&1 | head -n1) || { echo "$QEMU --version failed: $v"; return 1; }
	local k=0
	find_kernel || k=$?
	case $k in
	1) echo "no guest kernel /boot/vmlinuz-* (run: tests/hil/hil.sh install)"; return 1 ;;
	2) echo "guest kernel $KERNEL is not readable (run as root)"; return 1 ;;
	esac
	[[ -d /lib/modules/$KVER/kernel ]] || { echo "no modules for kernel $KVER in /lib/modules"; return 1; }
	[[ -x $BUSYBOX ]] && "$BUSYBOX" true 2>/dev/null || { echo "no usable $BUSYBOX (install busybox-static)"; return 1; }
	local tool
	for tool in modprobe depmod cpio gzip timeout ldd; do
		command -v "$tool" >/dev/null || { echo "$tool not found (install kmod, cpio)"; return 1; }
	done
	QEMU_VERSION=$v
}

cmd_check() {
	local why
	if ! why=$(preflight); then
		echo "hil check: unavailable: $why"
		exit "$EXIT_UNAVAILABLE"
	fi
	preflight >/dev/null
	echo "hil check: ok: $QEMU_VERSION; kernel $KVER"
}

# ---------------------------------------------------------------------------------------------
# initramfs

# Dependency-ordered module names for the guest, one per line (builtins dropped).
guest_module_files() {
	local m
	for m in "${GUEST_MODULES[@]}"; do
		modprobe -S "$KVER" --show-depends "$m" || fail "modprobe --show-depends $m for $KVER failed"
	done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
}

# Builds the initramfs if not cached; prints its path.
build_initramfs() {
	local key files out staging f rel name
	files=$(guest_module_files)
	key=$({
		echo "$KVER"
		echo "$files"
		sha256sum "$HIL_DIR/guest-init" "$HIL_DIR/guest-helpers.sh" "$HIL_DIR/hil.sh" "$BUSYBOX" | cut -d' ' -f1
	} | sha256sum | cut -c1-16)
	out=$CACHE_DIR/initramfs-$KVER-$key.cpio.gz
	if [[ -s $out ]]; then
		echo "$out"
		return 0
	fi
	mkdir -p "$CACHE_DIR"
	staging=$(mktemp -d "$CACHE_DIR/staging.XXXXXX")
	mkdir -p "$staging"/{bin,sbin,etc/hil,proc,sys,dev,tmp,run,mnt/share,root,lib/modules/"$KVER"}
	cp "$BUSYBOX" "$staging/bin/busybox"
	cp "$HIL_DIR/guest-init" "$staging/init"
	chmod 755 "$staging/init"
	cp "$HIL_DIR/guest-helpers.sh" "$staging/etc/hil/helpers.sh"
	for f in $files; do
		rel=${f#/lib/modules/$KVER/}
		rel=${rel#/usr/lib/modules/$KVER/}
		mkdir -p "$staging/lib/modules/$KVER/$(dirname "$rel")"
		# Decompress on the host: busybox modprobe cannot read compressed modules.
		case $f in
		*.ko.xz) xz -dc "$f" >"$staging/lib/modules/$KVER/${rel%.xz}" ;;
		*.ko.zst) zstd -qdc "$f" >"$staging/lib/modules/$KVER/${rel%.zst}" ;;
		*.ko.gz) gzip -dc "$f" >"$staging/lib/modules/$KVER/${rel%.gz}" ;;
		*) cp "$f" "$staging/lib/modules/$KVER/$rel" ;;
		esac
		name=$(basename "$rel")
		name=${name%%.ko*}
		echo "$name" >>"$staging/etc/hil/modules"
	done
	for f in modules.builtin modules.builtin.modinfo modules.order; do
		[[ -f /lib/modules/$KVER/$f ]] && cp "/lib/modules/$KVER/$f" "$staging/lib/modules/$KVER/"
	done
	depmod -b "$staging" "$KVER"
	(cd "$staging" && find . -print0 | sort -z | cpio --null -o -H newc --quiet | gzip -6) >"$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$staging"
	# Older builds for this kernel are stale now (the harness files changed).
	find "$CACHE_DIR" -maxdepth 1 -name "initramfs-$KVER-*.cpio.gz" ! -name "$(basename "$out")" -delete
	log "built $out ($(du -h "$out" | cut -f1))"
	echo "$out"
}

cmd_initramfs() {
	local why
	why=$(preflight) || { echo "hil: unavailable: $why" >&2; exit "$EXIT_UNAVAILABLE"; }
	preflight >/dev/null
	build_initramfs
}

# ---------------------------------------------------------------------------------------------
# share

# Copies BIN into the share and the shared libraries it needs (ldd) into share/lib; the ELF
# interpreter goes to share/lib too and its path is listed in share/lib/hil-interp for guest-init.
stage_bin() {
	local bin=$1 share=$2 line soname path out
	[[ -f $bin ]] || fail "--bin $bin: no such file"
	cp -L "$bin" "$share/"
	chmod +x "$share/$(basename "$bin")" 2>/dev/null || true
	out=$(ldd "$bin" 2>&1) || return 0 # not a dynamic executable: nothing to add
	while IFS= read -r line; do
		line=${line#"${line%%[![:space:]]*}"}
		case $line in
		*"not found"*) fail "--bin $bin: the host lacks a library it needs: $line" ;;
		*" => /"*)
			soname=${line%% => *}
			path=${line#* => }
			path=${path%% (*}
			[[ -e $share/lib/$soname ]] || cp -L "$path" "$share/lib/$soname"
			;;
		/*)
			path=${line%% (*}
			[[ -e $share/lib/$(basename "$path") ]] || cp -L "$path" "$share/lib/$(basename "$path")"
			grep -qxF "$path" "$share/lib/hil-interp" 2>/dev/null || echo "$path" >>"$share/lib/hil-interp"
			;;
		esac
	done <<<"$out"
}

# ---------------------------------------------------------------------------------------------
# kernel-log check

# check_log EXPECT_DMAR FILE...: prints offending lines; returns 0 when the log is clean (or,
# with EXPECT_DMAR=1, shows a DMAR fault and nothing else bad), 5 otherwise.
check_log() {
	local expect=$1 bad dmar status=0
	shift
	# The same line may be in several files (console and dmesg): report it once.
	bad=$(grep -hE -- "$BAD_RE" "$@" 2>/dev/null | awk '!seen[$0]++' || true)
	dmar=$(grep -hE -- "$DMAR_RE" "$@" 2>/dev/null | awk '!seen[$0]++' || true)
	if [[ -n $bad ]]; then
		echo "kernel log: oops/BUG/panic or VFIO warning:"
		sed 's/^/  | /' <<<"$bad"
		status=$EXIT_LOG
	fi
	if [[ $expect == 1 ]]; then
		if [[ -z $dmar ]]; then
			echo "kernel log: a DMAR fault was expected (--expect-dmar) but none was logged"
			status=$EXIT_LOG
		else
			echo "kernel log: expected DMAR fault(s) seen: $(wc -l <<<"$dmar") line(s)"
		fi
	elif [[ -n $dmar ]]; then
		echo "kernel log: DMAR fault(s):"
		sed 's/^/  | /' <<<"$dmar"
		status=$EXIT_LOG
	fi
	if [[ $status -eq 0 && $expect == 1 ]]; then
		echo "kernel log: no oops/BUG/panic or VFIO warning"
	elif [[ $status -eq 0 ]]; then
		echo "kernel log: clean"
	fi
	return "$status"
}

cmd_check_log() {
	local expect=0 files=()
	while [[ $# -gt 0 ]]; do
		case $1 in
		--expect-dmar) expect=1 ;;
		-*) fail "check-log: unknown option $1" ;;
		*) files+=("$1") ;;
		esac
		shift
	done
	[[ ${#files[@]} -gt 0 ]] || fail "usage: hil.sh check-log [--expect-dmar] FILE..."
	local f
	for f in "${files[@]}"; do [[ -r $f ]] || fail "check-log: cannot read $f"; done
	check_log "$expect" "${files[@]}"
}

# ---------------------------------------------------------------------------------------------
# run

QEMU_PID=
QEMU_PIDFILE=
cleanup() {
	local pid
	for pid in "$QEMU_PID" "$(cat "$QEMU_PIDFILE" 2>/dev/null || true)"; do
		[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || continue
		kill -TERM "$pid" 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	# A --pidfile QEMU may have been killed before timeout reaped it; wait quietly.
	wait 2>/dev/null || true
}

cmd_run() {
	local out="" timeout=300 disk_mb=256 mem_mb=1024 expect=0 script="" bins=()
	while [[ $# -gt 0 ]]; do
		case $1 in
		--out) out=${2:?--out needs a directory}; shift ;;
		--timeout) timeout=${2:?--timeout needs seconds}; shift ;;
		--disk-mb) disk_mb=${2:?--disk-mb needs a size}; shift ;;
		--mem-mb) mem_mb=${2:?--mem-mb needs a size}; shift ;;
		--bin) bins+=("${2:?--bin needs a path}"); shift ;;
		--expect-dmar) expect=1 ;;
		--) script=${2:-}; shift $(($# > 1 ? 2 : 1)); break ;;
		*) fail "run: unknown argument $1 (usage: run --out DIR [options] -- GUEST_SCRIPT)" ;;
		esac
		shift
	done
	[[ $# -eq 0 ]] || fail "run: one GUEST_SCRIPT after --, got extra: $*"
	[[ -n $out ]] || fail "run: --out DIR is required"
	[[ -n $script && -f $script ]] || fail "run: GUEST_SCRIPT '$script' is not a file"
	[[ $timeout =~ ^[0-9]+$ && $disk_mb =~ ^[0-9]+$ && $mem_mb =~ ^[0-9]+$ ]] ||
		fail "run: --timeout, --disk-mb, --mem-mb take whole numbers"

	local why
	if ! why=$(preflight); then
		echo "hil run: unavailable: $why"
		exit "$EXIT_UNAVAILABLE"
	fi
	preflight >/dev/null

	local t0 initrd share img b
	t0=$(date +%s.%N)
	initrd=$(build_initramfs)
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	share=$out/share
	rm -rf "$share"
	rm -f "$out"/{serial.log,dmesg.log,console-kernel.log,rc,qemu.stderr,qemu.cmd,disk.img,disk4k.img,nvme-log.img}
	mkdir -p "$share/lib"
	cp "$script" "$share/hil-script.sh"
	for b in ${bins[@]+"${bins[@]}"}; do stage_bin "$b" "$share"; done
	img=$out/disk.img
	truncate -s "${disk_mb}M" "$img"

	# no_timer_check: under a loaded TCG host the kernel's check_timer() (arch/x86/kernel/apic/
	# io_apic.c) can see too few timer ticks in its short window and, with interrupt remapping
	# on, panics "timer doesn't work through Interrupt-remapped IO-APIC" (2 of ~8 boots under
	# load); the parameter makes timer_irq_works() trust the timer (README.md).
	local append="console=ttyS0 intel_iommu=on iommu=pt panic=-1 loglevel=5 no_timer_check rdinit=/init"
	# The namespace: the controller's own (drive=), or with HIL_NVME_NS=1 an nvme-ns device.
	# QEMU (7.2) sets the Copy limits MSSRL/MCL/MSRC only from nvme-ns properties: the
	# controller's own namespace reports ONCS Copy with MSSRL = MCL = 0, so no Copy can be
	# sent to it (docs/xcopy.md). 128/128 are nvme-ns's defaults.
	# With HIL_NVME_4K=1 (the power-cut scenario) a second namespace, nsid 2, of 4096-byte
	# logical blocks on its own sparse 256 MiB image: a 4Kn disk on the kernel's nvme driver.
	# With HIL_NVME_LOGWRITES=512 or 4096 (the power-cut-vfio scenarios) the namespace's drive
	# is QEMU's blklogwrites filter over the image: every write and flush the emulated
	# controller makes is logged, in the format of Linux's dm-log-writes, to $out/nvme-log.img
	# (a fresh sparse file, so the entries end where a header of zeroes begins: crash-check
	# --log-format qemu), in units of the namespace's logical block, 512 or 4096 bytes.
	local nvme_drive=(-drive "file=$img,if=none,id=nvm,format=raw")
	local nvme_dev=(-device nvme,serial=SCSTACCEL1,drive=nvm)
	local set=0 v
	for v in HIL_NVME_NS HIL_NVME_4K HIL_NVME_LOGWRITES; do [[ -z ${!v:-} ]] || set=$((set + 1)); done
	if [[ $set -gt 1 ]]; then
		fail "HIL_NVME_NS, HIL_NVME_4K and HIL_NVME_LOGWRITES are for different scenarios; set one"
	elif [[ -n ${HIL_NVME_LOGWRITES:-} ]]; then
		local lbs=$HIL_NVME_LOGWRITES
		[[ $lbs == 512 || $lbs == 4096 ]] || fail "HIL_NVME_LOGWRITES is the block size, 512 or 4096, not '$lbs'"
		truncate -s 4G "$out/nvme-log.img"
		# discard=unmap: the controller's deallocations reach the filter (logged) and punch
		# the image (QEMU drops them at the first node without it).
		nvme_drive=(-blockdev "driver=file,node-name=nvm-image,filename=$img,discard=unmap"
			-blockdev "driver=file,node-name=nvm-log,filename=$out/nvme-log.img"
			-blockdev "driver=blklogwrites,node-name=nvm,file=nvm-image,log=nvm-log,log-sector-size=$lbs,discard=unmap")
		nvme_dev=(-device nvme,id=nvme0,serial=SCSTACCEL1
			-device "nvme-ns,drive=nvm,bus=nvme0,nsid=1,logical_block_size=$lbs,physical_block_size=$lbs")
	elif [[ -n ${HIL_NVME_NS:-} ]]; then
		nvme_dev=(-device nvme,id=nvme0,serial=SCSTACCEL1
			-device nvme-ns,drive=nvm,bus=nvme0,nsid=1,mssrl=128,mcl=128,msrc=127)
	elif [[ -n ${HIL_NVME_4K:-} ]]; then
		truncate -s 256M "$out/disk4k.img"
		nvme_dev=(-drive "file=$out/disk4k.img,if=none,id=nvm4k,format=raw"
			-device nvme,id=nvme0,serial=SCSTACCEL1
			-device nvme-ns,drive=nvm,bus=nvme0,nsid=1
			-device nvme-ns,drive=nvm4k,bus=nvme0,nsid=2,logical_block_size=4096,physical_block_size=4096)
	fi
	local qemu_args=(
		-accel tcg,thread=multi -cpu max -smp 2 -m "$mem_mb"
		-machine q35,kernel-irqchip=split
		-device intel-iommu,intremap=on,caching-mode=on
		"${nvme_drive[@]}"
		"${nvme_dev[@]}"
		-fsdev "local,id=fs0,path=$share,security_model=none"
		-device virtio-9p-pci,fsdev=fs0,mount_tag=share
		-kernel "$KERNEL" -initrd "$initrd" -append "$append"
		-vga none -net none -nographic -serial mon:stdio -no-reboot
	)
	QEMU_PIDFILE=$out/qemu.pid
	rm -f "$QEMU_PIDFILE"
	qemu_args+=(-pidfile "$QEMU_PIDFILE")
	printf '%q ' timeout -k 10 "$timeout" "$QEMU" "${qemu_args[@]}" >"$out/qemu.cmd"
	echo >>"$out/qemu.cmd"

	trap cleanup EXIT
	trap 'exit 130' INT TERM
	log "booting ($KVER, ${mem_mb} MiB, disk ${disk_mb} MiB, timeout ${timeout} s); console -> $out/serial.log"
	local qrc=0
	timeout -k 10 "$timeout" "$QEMU" "${qemu_args[@]}" </dev/null >"$out/serial.log" 2>"$out/qemu.stderr" &
	QEMU_PID=$!
	wait "$QEMU_PID" || qrc=$?
	QEMU_PID=
	rm -f "$QEMU_PIDFILE"
	local t1
	t1=$(date +%s.%N)

	# Results. The script's rc from the share, else from the console marker.
	[[ -f $share/dmesg.log ]] && cp "$share/dmesg.log" "$out/dmesg.log"
	local src="" rc
	if [[ -f $share/script-rc ]]; then
		src=$(tr -dc '0-9' <"$share/script-rc")
	fi
	if [[ -z $src ]]; then
		src=$(sed -n 's/^HIL: exit \([0-9]*\).*/\1/p' "$out/serial.log" | tail -n1)
	fi

	# The kernel log: the guest's dmesg plus the kernel's own console lines (timestamped, so the
	# script's output on the console cannot trip the check), which also cover a guest that died
	# before writing dmesg.log.
	tr -d '\r' <"$out/serial.log" | grep -E '^\[ *[0-9]+\.[0-9]+\] ' >"$out/console-kernel.log" || true
	local verdict logrc=0 logout logs=("$out/console-kernel.log")
	[[ -f $out/dmesg.log ]] && logs+=("$out/dmesg.log")
	[[ -s $out/qemu.stderr ]] && logs+=("$out/qemu.stderr")
	logout=$(check_log "$expect" "${logs[@]}") || logrc=$?
	if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
		rc=$EXIT_TIMEOUT
		verdict="timeout: the guest did not power off within ${timeout} s"
	elif [[ -z $src ]]; then
		rc=$EXIT_NO_REPORT
		verdict="the guest never reported an exit code (QEMU rc $qrc; see serial.log, qemu.stderr)"
	elif [[ $logrc -ne 0 ]]; then
		rc=$EXIT_LOG
		verdict="kernel-log check failed (script rc $src)"
	else
		rc=$src
		verdict="script rc $src"
	fi
	[[ -f $out/dmesg.log ]] || logout+=$'\n'"kernel log: no dmesg.log from the guest; checked serial.log only"
	echo "$rc" >"$out/rc"

	echo "== hil run summary ($out)"
	grep -E '^HIL: (nvme|ready|script done|error|warning)' "$out/serial.log" | sed 's/^/  /' || true
	echo "$logout" | sed 's/^/  /'
	if [[ -s $out/qemu.stderr ]]; then
		echo "  qemu stderr:"
		sed 's/^/  | /' "$out/qemu.stderr" | head -n 20
	fi
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "  wall time %.1f s (initramfs+boot+script+poweroff)\n", b - a }'
	echo "  result: $verdict -> exit $rc"
	exit "$rc"
}

usage() {
	sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
	local cmd=${1:-}
	[[ $# -gt 0 ]] && shift
	case $cmd in
	install) cmd_install "$@" ;;
	check) cmd_check "$@" ;;
	run) cmd_run "$@" ;;
	check-log) cmd_check_log "$@" ;;
	initramfs) cmd_initramfs "$@" ;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit "$EXIT_USAGE"
		;;
	esac
}

main "$@"
