#!/usr/bin/env bash
# Refresh a target's seed corpus from an AFL++ output queue (docs/fuzzing.md): the queue
# entries that found new coverage (`+cov`), smallest first, at most MAX (default 300), as
# fuzz/corpus/TARGET/afl-<id>. Seeds written by hand and regression inputs (crash-*) stay.
#   fuzz/seed-from-queue.sh TARGET QUEUE_DIR [MAX]
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 queue=$2 max=${3:-300}
dir=fuzz/corpus/$target
mkdir -p "$dir"
rm -f "$dir"/afl-*
n=0
while IFS= read -r f; do
  id=$(basename "$f" | sed -n 's/^id:\([0-9]*\).*/\1/p')
  cp "$f" "$dir/afl-$id"
  n=$((n + 1))
done < <(find "$queue" -maxdepth 1 -type f -name 'id:*+cov*' -printf '%s %p\n' | sort -n | head -n "$max" | cut -d' ' -f2-)
echo "$target: $n seeds from $queue"
