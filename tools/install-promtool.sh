#!/usr/bin/env bash
# Fetch `promtool` for the metrics test (tools/src/metrics.rs: `promtool check metrics` lints the
# exposition the service serves: HELP and TYPE for every family, counters ending in _total,
# label syntax). promtool ships in Debian's `prometheus` package; installing that package would
# also enable a Prometheus server unit on the machine, so this script only downloads the .deb
# (`apt-get download`, no root needed once the package lists exist) and unpacks promtool alone
# into target/promtool/bin. Idempotent: does nothing when promtool is already on PATH or
# unpacked. Prints the directory to put on PATH; exit status 0 when promtool runs afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/target/promtool"

if command -v promtool >/dev/null 2>&1; then
  echo "promtool: $(command -v promtool) already on PATH" >&2
  dirname "$(command -v promtool)"
  exit 0
fi
if [[ -x "$dest/bin/promtool" ]] && "$dest/bin/promtool" --version >/dev/null 2>&1; then
  echo "$dest/bin"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "promtool: not on PATH, and no apt-get/dpkg-deb to fetch Debian's prometheus package" >&2
  exit 1
fi

work="$dest/download"
rm -rf "$work" && mkdir -p "$work" "$dest/bin"
fetch() { (cd "$work" && apt-get download prometheus >/dev/null 2>&1); }
if ! fetch; then
  # A fresh machine may have no package lists yet; refreshing them needs root.
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq >/dev/null 2>&1 || true
  fi
  if ! fetch; then
    echo "promtool: apt-get download prometheus failed (no package lists, or no network)" >&2
    exit 1
  fi
fi
dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
mv "$work/usr/bin/promtool" "$dest/bin/promtool"
rm -rf "$work"
"$dest/bin/promtool" --version 2>&1 | head -1 >&2
echo "$dest/bin"
