#!/usr/bin/env bash
# Install AFL++ for the fuzz campaign (docs/fuzzing.md): `cargo install cargo-afl`, which builds
# AFL++ from the source it ships (into ~/.local/share/afl.rs) for the installed stable
# toolchain. Needs network access to crates.io, a C compiler and make. Idempotent: does nothing
# when `cargo afl` already works. Exit status 0 when `cargo afl` works afterwards.
set -euo pipefail
AFL_VERSION=0.18.2
if cargo afl --version >/dev/null 2>&1; then
  echo "afl: $(cargo afl --version 2>/dev/null | head -1) already installed"
  exit 0
fi
if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends build-essential >/dev/null
  else
    echo "afl: no C compiler or make, and cannot install them (not root or no apt-get)"
    exit 1
  fi
fi
echo "afl: installing cargo-afl $AFL_VERSION (builds AFL++ from source; about 2 minutes on 2 cores)"
cargo install cargo-afl --locked --version "$AFL_VERSION"
# Recent cargo-afl builds AFL++ at install; older ones need `config --build` (an error saying it
# is already built is fine).
cargo afl config --build >/dev/null 2>&1 || true
cargo afl --version
