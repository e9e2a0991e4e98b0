#!/usr/bin/env bash
# Miri over the unsafe code's unit tests (docs/miri.md): the tests of the modules that hold this
# workspace's unsafe code and that Miri can run (anonymous mmap, threads, atomics, the clock; no
# ioctl, no /proc, no mincore, no madvise), each run interpreted by Miri, which fails on
# undefined behaviour: out-of-bounds or use-after-free accesses, aliasing violations (Stacked
# Borrows by default), data races and mixed-size atomic races, uninitialized reads, misalignment.
# Bounded: the subset below takes a few minutes on 2 cores (tests that run long under Miri are
# skipped by name, each with its reason here). Exit status 1 when Miri finds anything.
#
#   tools/miri.sh [--tree-borrows] [--filter SUBSTRING]
#
# --tree-borrows checks aliasing with Tree Borrows instead of Stacked Borrows; --filter runs only
# the steps whose line below contains SUBSTRING (a crate or module name). Needs the nightly
# toolchain with the miri component (`rustup toolchain install nightly --component miri`);
# without it the script says so loudly and exits 0 (it is not wired into .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

borrows=""
filter=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tree-borrows) borrows="-Zmiri-tree-borrows"; shift ;;
    --filter) filter="$2"; shift 2 ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
done

if ! miri_version=$(cargo +nightly miri --version 2>&1); then
  echo "=================================================================================="
  echo "== miri: SKIPPED, NOTHING WAS CHECKED: \`cargo +nightly miri\` is not available here:"
  echo "$miri_version" | sed 's/^/==   /'
  echo "== install it with: rustup toolchain install nightly --component miri"
  echo "=================================================================================="
  exit 0
fi
echo "== miri: $miri_version ${borrows:-(Stacked Borrows)}"
cargo +nightly miri setup >/dev/null

# Proptest under Miri: 4 cases (each is interpreted), and no failure file (it asks for the
# current directory, which isolation refuses). Environment variables reach the interpreted
# program only through -Zmiri-env-set.
proptest_env="-Zmiri-env-set=PROPTEST_CASES=4 -Zmiri-env-set=PROPTEST_DISABLE_FAILURE_PERSISTENCE=1"

# One step a line: crate | extra MIRIFLAGS | arguments to the test binary (filters, --skip).
# Every step runs isolated (deterministic clock, no host files) unless its flags say otherwise.
steps=(
  # unmap_waits_for_a_copy_in_progress: over 6 minutes under Miri (a copy long enough to be
  # caught in progress).
  "scst-accel-hal | | shared_mem:: sim::iommu_tests:: unmap_rule_tests:: --skip sim::iommu_tests::unmap_waits_for_a_copy_in_progress"
  "scst-accel-dma | | region:: mapping:: ring:: segments:: iova:: unwinding:: page_buffer:: --skip page_buffer::tests::pread_and_pwrite"
  # The one test of a buffer read and written by the kernel (pread/pwrite on a real file):
  # needs the host's file system, so no isolation for it alone.
  "scst-accel-dma | -Zmiri-disable-isolation | page_buffer::tests::pread_and_pwrite_move_file_data_in_place"
  # The handler's TCMU region (byte-wise copies and the mailbox atomics over heap memory standing
  # in for the kernel's mapping), the ring over it with the simulated kernel, the teardown
  # primitives (through handler/src/sync.rs), and the integer hash.
  "scst-accel-handler | | tcmu::region:: tcmu::ring::tests teardown::drain:: teardown::lease:: int_map::"
  # The pool: the arena and stash tests, and the pool tests that take seconds under Miri (most
  # of the others run thousands of pool operations, over 25 s each there: docs/miri.md).
  "scst-accel-dma | | sgv::arena:: sgv::stash:: sgv::refill_tests::dropping_a_pool_stops_its_refill_thread_and_unmaps sgv::tests::a_foreign_buffer_is_counted_and_goes_home sgv::tests::a_miss_maps_only_when_its_class_has_no_free_chunk"
)

start=$(date +%s)
failed=()
for step in "${steps[@]}"; do
  if [[ -n $filter && $step != *"$filter"* ]]; then continue; fi
  IFS='|' read -r crate flags args <<<"$step"
  crate=$(xargs <<<"$crate")
  flags=$(xargs <<<"$flags")
  step_start=$(date +%s)
  echo "== miri: $crate ${flags:+($flags) }$args"
  # shellcheck disable=SC2086 # the flags and arguments are word lists
  if MIRIFLAGS="$borrows $proptest_env $flags" cargo +nightly miri test -p "$crate" --lib --locked -- $args; then
    echo "miri: $crate passed in $(($(date +%s) - step_start))s"
  else
    echo "miri: $crate FAILED in $(($(date +%s) - step_start))s"
    failed+=("$crate: $args")
  fi
done

echo "miri: ${borrows:-Stacked Borrows}, $(($(date +%s) - start))s in all"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "== miri: FAILURES (undefined behaviour, or a test Miri cannot run: see docs/miri.md)"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
