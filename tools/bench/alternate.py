#!/usr/bin/env python3
"""Compare two builds of scst-accel on the bench's ratios, in alternated pairs.

On a shared machine one bench run's ratios move by a quarter from run to run (the load of other
tenants changes within seconds), so one run of each build ranks nothing. This runs the two
builds' `bench` in turn, PAIRS times, and reports the median and range of each board's IOPS
ratio to RAM and of its CPU per command, per build:

    tools/bench/alternate.py BASE_BINARY HEAD_BINARY [--workload 4k-randread-qd32]
                             [--layer loopback] [--pairs 20] [--duration 1s]

Build the base beside the head, e.g. `git worktree add /tmp/base REV` and
`CARGO_TARGET_DIR=/tmp/base-target cargo build --release -p scst-accel` there.
docs/performance.md says which figures were measured this way.
"""

import argparse
import json
import statistics
import subprocess
import sys

BOARDS = ["ram", "sim", "nvme-sim"]


def run(binary, args):
    """One bench run's cells by board; None (and why, on stderr) if it failed or was unhealthy."""
    done = subprocess.run(
        [binary, "bench", "--boards", ",".join(BOARDS), "--layers", args.layer,
         "--workloads", args.workload, "--duration", args.duration, "--json"],
        capture_output=True, text=True, timeout=600)
    try:
        cells = {cell["board"]: cell for cell in json.loads(done.stdout)["results"]}
    except (json.JSONDecodeError, KeyError) as e:
        print(f"{binary}: exit {done.returncode}, no results ({e}): {done.stderr[-500:]}", file=sys.stderr)
        return None
    if done.returncode != 0 or any(not cells.get(b, {}).get("healthy") for b in BOARDS):
        print(f"{binary}: exit {done.returncode}, a cell unhealthy: pair left out", file=sys.stderr)
        return None
    return cells


def spread(values):
    return f"{statistics.median(values):.3f} [{min(values):.2f}-{max(values):.2f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--workload", default="4k-randread-qd32")
    parser.add_argument("--layer", default="loopback", choices=["loopback", "store"])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--duration", default="1s")
    args = parser.parse_args()
    builds = {"base": args.base, "head": args.head}
    cells = {name: [] for name in builds}
    for pair in range(args.pairs):
        # Each build first in every other pair: neither always runs on the other's heels.
        order = list(builds.items())
        if pair % 2:
            order.reverse()
        runs = {name: run(binary, args) for name, binary in order}
        if all(runs.values()):
            for name, cells_of_run in runs.items():
                cells[name].append(cells_of_run)
    for name in builds:
        runs = cells[name]
        if not runs:
            print(f"{name}: no pair completed")
            continue
        print(f"{name} ({builds[name]}), {len(runs)} runs, median [range]:")
        for board in BOARDS:
            iops = [r[board]["iops"] / r["ram"]["iops"] for r in runs]
            cpu = [r[board]["cpu_us_per_command"] for r in runs]
            cpu_ratio = [r[board]["cpu_us_per_command"] / r["ram"]["cpu_us_per_command"] for r in runs]
            print(f"  {board:9} IOPS/RAM {spread(iops)}  CPU us/command {spread(cpu)}"
                  f"  CPU/RAM's {spread(cpu_ratio)}")


if __name__ == "__main__":
    main()
