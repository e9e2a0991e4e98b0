#!/usr/bin/env bash
# Install fio for `scst-accel bench --fio` (the side-by-side column): fio is not a build
# dependency, and the bench reports the column as skipped, with this script's name, without it.
#
#   tools/bench/install-fio.sh        (as root, or with sudo available)
set -euo pipefail
if command -v fio >/dev/null 2>&1; then
	echo "fio is installed: $(command -v fio) ($(fio --version))"
	exit 0
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null 2>&1 || { echo "install-fio: run as root (no sudo here)" >&2; exit 1; }
	sudo=sudo
fi
if command -v apt-get >/dev/null 2>&1; then
	$sudo apt-get update
	$sudo apt-get install -y fio
elif command -v dnf >/dev/null 2>&1; then
	$sudo dnf install -y fio
elif command -v yum >/dev/null 2>&1; then
	$sudo yum install -y fio
elif command -v zypper >/dev/null 2>&1; then
	$sudo zypper --non-interactive install fio
elif command -v apk >/dev/null 2>&1; then
	$sudo apk add fio
else
	echo "install-fio: no known package manager; install fio (>= 3.x, with io_uring) by hand" >&2
	exit 1
fi
echo "fio installed: $(command -v fio) ($(fio --version))"
