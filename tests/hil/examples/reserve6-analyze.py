#!/usr/bin/env python3
"""Timelines of the Reserve6 race from reserve6-loop.sh's output (DIR/share/reserve6).

Usage: reserve6-analyze.py DIR/share/reserve6...  (several guests' runs are added up)

Per run: the Logout test's first-initiator session, from its Logout Request to the moment LIO
released its SPC-2 reservation (the "Deregistered fabric_sess" pr_debug, printed right after
transport_deregister_session() dropped the reservation), against the second initiator's next
RESERVE(6); and when LIO noticed ITNexusLoss' dropped connection. Over all session teardowns:
how long each waited in target_wait_for_cmds() and how many of that connection's commands
(target tracepoints) were still open when it stopped its command counter - an open command
would be one in a backstore, e.g. in scst-accel's TCMU ring.
"""
import os
import re
import statistics
import sys

DMESG = re.compile(r"^\[\s*([\d.]+)\] \[(\d+)\] (.*)$")
TRACE = re.compile(
    r"^\s*(\S+)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (target_sequencer_start|target_cmd_complete): "
    r"(\S+) (?:->|<-) LUN \d+ tag (0x[0-9a-f]+) (.*)$"
)
MARKS = {
    "Stopping command counter": "stop",
    "Waiting for cmds done": "done",
    "TARGET_CORE[iSCSI]: Deregistered fabric_sess": "released",
}


def commands(path):
    """tag -> the command's RX thread, initiator, start, end, opcode and status."""
    cmds = {}
    for line in open(path, errors="replace"):
        m = TRACE.match(line)
        if not m:
            continue
        _, pid, t, event, initiator, tag, rest = m.groups()
        if event == "target_sequencer_start":
            cmds[tag] = {"pid": int(pid), "ini": initiator, "start": float(t), "end": None,
                         "op": rest.split()[0], "status": None}
        elif tag in cmds:
            cmds[tag]["end"] = float(t)
            cmds[tag]["status"] = rest.split("status ")[1].split(" (sense")[0]
    return cmds


def teardowns(path, cmds):
    """Session teardowns in order of their release, keyed on the RX thread that runs them."""
    open_tds, done = {}, []
    for line in open(path, errors="replace"):
        m = DMESG.match(line)
        if not m:
            continue
        t, pid, msg = float(m.group(1)), int(m.group(2)), m.group(3)
        if msg.startswith("Got Logout Request") or msg.startswith("Performing cleanup for failed"):
            open_tds[pid] = {"kind": "logout" if "Logout" in msg else "drop", "start": t}
            continue
        td = open_tds.get(pid)
        if td is None:
            continue
        for text, key in MARKS.items():
            if msg.startswith(text) and key not in td:
                td[key] = t
        if "released" in td and "stop" in td and "done" in td:
            del open_tds[pid]
            td["open"] = [c for c in cmds.values() if c["pid"] == pid and c["start"] <= td["stop"]
                          and (c["end"] is None or c["end"] > td["stop"])]
            td["ini"] = next((c["ini"] for c in cmds.values() if c["pid"] == pid), "?")
            done.append(td)
    return done


def main(dirs):
    summary = {}
    for d in dirs:
        for line in open(os.path.join(d, "summary.txt")):
            m = re.match(r"run (\d+): (.*)", line)
            if m:
                summary[(d, int(m.group(1)))] = dict(kv.split("=") for kv in m.group(2).split())
    waits, open_cmds, logout, drops, itn = [], 0, [], [], []
    for d, n in summary:
        cmds = commands(os.path.join(d, f"trace-{n}.txt"))
        tds = teardowns(os.path.join(d, f"dmesg-{n}.log"), cmds)
        for td in tds:
            waits.append((td["done"] - td["stop"]) * 1e3)
            open_cmds += len(td["open"])
        first = [td for td in tds if not td["ini"].endswith("-2")]
        res = summary[(d, n)]
        line = f"{d if len(dirs) > 1 else 'run'} {n:2}: Logout={res['Logout']:6} ITNexusLoss={res['ITNexusLoss']:6}"
        # iscsi-test-cu's probe session logs out first; the next first-initiator logout is the
        # Logout test's.
        lo = [td for td in first if td["kind"] == "logout"]
        if len(lo) >= 2:
            td = lo[1]
            def later(second, td=td):
                """RESERVE(6)s of the second (or first) initiator after the logout, in order."""
                return sorted((c for c in cmds.values() if c["ini"].endswith("-2") == second
                               and c["start"] > td["start"] and c["op"] == "RESERVE"),
                              key=lambda c: c["start"])

            r = later(True)
            if r:
                rel, sec = (td["released"] - td["start"]) * 1e3, (r[0]["start"] - td["start"]) * 1e3
                logout.append((res["Logout"], rel, sec))
                line += (f" | logout->released {rel:5.1f} ms (counter wait "
                         f"{(td['done'] - td['stop']) * 1e3:5.1f}), logout->2nd initiator's "
                         f"RESERVE {sec:6.1f} ms: {r[0]['status']}")
            # ITNexusLoss' first RESERVE(6) by the first initiator: reserve6() tries up to 3 times.
            f = later(False)
            if f:
                burst = [c for c in f if c["start"] - f[0]["start"] < 0.02][:3]
                itn.append((res["ITNexusLoss"], burst[-1]["start"] - td["released"], len(burst)))
        dr = [td for td in first if td["kind"] == "drop"]
        if dr:
            td = dr[0]
            last = max((c["start"] for c in cmds.values() if c["start"] < td["start"]), default=None)
            if last is not None:
                drops.append((td["start"] - last, (td["released"] - td["start"]) * 1e3))
                line += f" | drop seen {drops[-1][0]:.2f} s after the last command, released {drops[-1][1]:.1f} ms later"
        print(line)
    print()
    for test in ("Logout", "ITNexusLoss"):
        failed = sum(1 for r in summary.values() if r[test] == "FAILED")
        print(f"{test}: failed {failed} of {len(summary)} runs")
    alone = sum(1 for r in summary.values() if r["ITNexusLoss"] == "FAILED" and r["Logout"] != "FAILED")
    print(f"ITNexusLoss failed where Logout had not: {alone}")
    if waits:
        print(f"session teardowns: {len(waits)}; commands still open when the counter stopped: {open_cmds}; "
              f"target_wait_for_cmds min {min(waits):.1f} median {statistics.median(waits):.1f} "
              f"max {max(waits):.1f} ms")
    for outcome in ("FAILED", "passed"):
        rows = [r for r in logout if r[0] == outcome]
        if rows:
            rel, sec = [r[1] for r in rows], [r[2] for r in rows]
            print(f"Logout {outcome}: {len(rows)} runs; logout->released median {statistics.median(rel):.1f} ms "
                  f"[{min(rel):.1f}, {max(rel):.1f}]; logout->2nd initiator's RESERVE median "
                  f"{statistics.median(sec):.1f} ms [{min(sec):.1f}, {max(sec):.1f}]")
    for outcome in ("FAILED", "passed"):
        rows = [r for r in itn if r[0] == outcome]
        if rows:
            print(f"ITNexusLoss {outcome}: {len(rows)} runs; the first initiator's last RESERVE attempt came before "
                  f"the Logout test's first session's release was logged in {sum(1 for r in rows if r[1] < 0)}")
    if drops:
        print(f"ITNexusLoss drop: seen by LIO {min(x[0] for x in drops):.2f}-{max(x[0] for x in drops):.2f} s "
              f"after the last command, reservation released {min(x[1] for x in drops):.1f}-"
              f"{max(x[1] for x in drops):.1f} ms later (the test sleeps 3 s)")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
