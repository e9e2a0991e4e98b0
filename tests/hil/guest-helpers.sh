# Guest-side helpers for the HIL harness (busybox sh). Sourced by guest-init; also installed as
# the commands `bind_vfio` and `bind_nvme` (see guest-init), so a guest script can call them
# either way. Every wait is bounded; on failure the function prints why and returns non-zero.

# hil_wait SECONDS CMD...: run CMD every 0.1 s until it succeeds or SECONDS pass.
hil_wait() {
	_hw_left=$(($1 * 10))
	shift
	while ! "$@" 2>/dev/null; do
		_hw_left=$((_hw_left - 1))
		[ "$_hw_left" -gt 0 ] || return 1
		sleep 0.1
	done
	return 0
}

# hil_driver BDF: the name of the driver BDF is bound to, or nothing.
hil_driver() {
	if [ -e "/sys/bus/pci/devices/$1/driver" ]; then
		basename "$(readlink "/sys/bus/pci/devices/$1/driver")"
	fi
}

# hil_iommu_group BDF: the device's IOMMU group number (fails when the IOMMU is off).
hil_iommu_group() {
	_hg=$(readlink "/sys/bus/pci/devices/$1/iommu_group") || return 1
	basename "$_hg"
}

# hil_unbind BDF: detach BDF from its current driver, if any.
hil_unbind() {
	if [ -e "/sys/bus/pci/devices/$1/driver" ]; then
		echo "$1" >"/sys/bus/pci/devices/$1/driver/unbind"
	fi
}

# bind_vfio BDF: bind BDF to vfio-pci and wait (10 s) for /dev/vfio/GROUP. Prints the group node.
bind_vfio() {
	_dev=/sys/bus/pci/devices/$1
	[ -d "$_dev" ] || { echo "bind_vfio: no PCI device $1" >&2; return 1; }
	_group=$(hil_iommu_group "$1") || { echo "bind_vfio: $1 has no IOMMU group (IOMMU off?)" >&2; return 1; }
	if [ "$(hil_driver "$1")" != vfio-pci ]; then
		hil_unbind "$1" || return 1
		echo vfio-pci >"$_dev/driver_override" || return 1
		echo "$1" >/sys/bus/pci/drivers_probe || true
	fi
	if ! hil_wait 10 test -c "/dev/vfio/$_group"; then
		echo "bind_vfio: /dev/vfio/$_group did not appear within 10 s (driver: $(hil_driver "$1"))" >&2
		return 1
	fi
	if [ "$(hil_driver "$1")" != vfio-pci ]; then
		echo "bind_vfio: $1 is bound to '$(hil_driver "$1")', not vfio-pci" >&2
		return 1
	fi
	echo "/dev/vfio/$_group"
}

# hil_nvme_ns BDF: the first namespace block device of the NVMe controller at BDF (e.g. nvme0n1).
hil_nvme_ns() {
	for _c in "/sys/bus/pci/devices/$1"/nvme/nvme*; do
		for _n in "$_c"/nvme*n*; do
			[ -e "$_n" ] || continue
			_ns=$(basename "$_n")
			[ -b "/dev/$_ns" ] && { echo "$_ns"; return 0; }
		done
	done
	return 1
}

# bind_nvme BDF: give BDF back to the kernel nvme driver and wait (30 s) for its namespace block
# device. Prints the block device path (/dev/nvme0n1 with one controller).
bind_nvme() {
	_dev=/sys/bus/pci/devices/$1
	[ -d "$_dev" ] || { echo "bind_nvme: no PCI device $1" >&2; return 1; }
	if [ "$(hil_driver "$1")" != nvme ]; then
		hil_unbind "$1" || return 1
		# An empty write clears the override, so the ID table (class 0x010802) picks nvme.
		echo >"$_dev/driver_override" || return 1
		echo "$1" >/sys/bus/pci/drivers_probe || true
	fi
	if ! hil_wait 30 hil_nvme_ns "$1" >/dev/null; then
		echo "bind_nvme: no namespace block device for $1 within 30 s (driver: $(hil_driver "$1"))" >&2
		return 1
	fi
	echo "/dev/$(hil_nvme_ns "$1")"
}
