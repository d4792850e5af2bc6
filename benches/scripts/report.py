#!/usr/bin/env python3
"""Result records and the Markdown report for benches/compare.sh.

    report.py record --tree T --scenario S --tool rdist|rsync --rep N \\
                     --timing REC.json --stdout TOOL_STDOUT
        Print one TSV result line (columns: COLUMNS) built from timecmd.py's
        record and the tool's own output: rsync --stats ("Total bytes
        sent/received", "Number of regular files transferred") or rdist --json
        (wire_bytes, files_sent; the other documented keys are checked too).

    report.py table RESULTS.tsv [NOTE...]
        Print Markdown tables of medians per (tree, scenario); NOTE lines are
        printed below them.
"""

import argparse
import json
import re
import statistics
import sys

COLUMNS = ["tree", "scenario", "tool", "rep", "wall", "bytes", "maxrss_kib", "tree_rss_kib",
           "cpu", "files_sent", "lingering"]
RDIST_KEYS = ["files_scanned", "files_sent", "files_deleted", "literal_bytes", "delta_bytes",
              "wire_bytes", "seconds"]
TREE_ORDER = ["small", "medium", "large"]
SCEN_ORDER = ["initial", "noop", "incremental"]


def die(msg):
    print(f"report.py: {msg}", file=sys.stderr)
    sys.exit(1)


def rsync_stats(text):
    def num(label):
        m = re.search(rf"^{re.escape(label)}:\s*([\d,]+)", text, re.M)
        if not m:
            die(f"rsync --stats output lacks '{label}'")
        return int(m.group(1).replace(",", ""))
    return (num("Total bytes sent") + num("Total bytes received"),
            num("Number of regular files transferred"))


def rdist_stats(text):
    objs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if not objs:
        try:
            objs.append(json.loads(text))
        except json.JSONDecodeError:
            die(f"rdist --json printed no JSON object on stdout: {text[:500]!r}")
    if len(objs) != 1:
        die(f"rdist --json printed {len(objs)} JSON objects on stdout, expected one")
    o = objs[0]
    missing = [k for k in RDIST_KEYS if k not in o]
    if missing:
        die(f"rdist --json output lacks keys {missing}: {json.dumps(o)[:500]}")
    return int(o["wire_bytes"]), int(o["files_sent"])


def record(a):
    with open(a.timing) as f:
        t = json.load(f)
    with open(a.stdout, errors="replace") as f:
        out = f.read()
    nbytes, sent = (rsync_stats if a.tool == "rsync" else rdist_stats)(out)
    row = [a.tree, a.scenario, a.tool, a.rep, f"{t['wall']:.6f}", nbytes,
           "" if t["maxrss_kib"] is None else t["maxrss_kib"], t["tree_rss_kib"],
           f"{t['user'] + t['sys']:.3f}", sent, t["lingering"]]
    print("\t".join(str(x) for x in row))


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def fmt_bytes(x):
    if x is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= div:
            return f"{x / div:.1f} {unit}"
    return f"{int(x)} B"


def fmt_kib(x):
    return "-" if x is None else f"{x / 1024:.1f} MiB"


def table(a):
    rows = []
    with open(a.results) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            rows.append(dict(zip(COLUMNS, line.rstrip("\n").split("\t"))))
    if not rows:
        die("no results")
    groups = {}
    for r in rows:
        groups.setdefault((r["tree"], r["scenario"]), {}).setdefault(r["tool"], []).append(r)

    def med(rs, key, conv=float):
        vals = [conv(r[key]) for r in rs if r[key] != ""]
        return statistics.median(vals) if vals else None

    def order(k):
        tree, scen = k
        return (TREE_ORDER.index(tree) if tree in TREE_ORDER else 99, tree,
                SCEN_ORDER.index(scen) if scen in SCEN_ORDER else 99, scen)

    main = ["| tree | scenario | rdist s | rsync s | rdist/rsync | rdist bytes | rsync bytes "
            "| rdist peak RSS | rsync peak RSS |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    detail = ["| tree | scenario | runs | rdist s min-max | rsync s min-max | rdist CPU s | rsync CPU s "
              "| rdist Σ RSS | rsync Σ RSS | rdist files sent | rsync files sent |",
              "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for key in sorted(groups, key=order):
        g = groups[key]
        d, r = g.get("rdist", []), g.get("rsync", [])
        dw, rw = med(d, "wall"), med(r, "wall")
        ratio = f"{dw / rw:.2f}×" if dw is not None and rw else "-"
        main.append(f"| {key[0]} | {key[1]} | {fmt_s(dw)} | {fmt_s(rw)} | {ratio} "
                    f"| {fmt_bytes(med(d, 'bytes'))} | {fmt_bytes(med(r, 'bytes'))} "
                    f"| {fmt_kib(med(d, 'maxrss_kib'))} | {fmt_kib(med(r, 'maxrss_kib'))} |")

        def span(rs):
            if not rs:
                return "-"
            w = [float(x["wall"]) for x in rs]
            return f"{fmt_s(min(w))}-{fmt_s(max(w))}"

        def sent(rs):
            v = med(rs, "files_sent", int)
            return "-" if v is None else f"{v:g}"
        detail.append(f"| {key[0]} | {key[1]} | {max(len(d), len(r))} | {span(d)} | {span(r)} "
                      f"| {fmt_s(med(d, 'cpu'))} | {fmt_s(med(r, 'cpu'))} "
                      f"| {fmt_kib(med(d, 'tree_rss_kib'))} | {fmt_kib(med(r, 'tree_rss_kib'))} "
                      f"| {sent(d)} | {sent(r)} |")
    print("\n".join(main))
    print()
    print("Details (medians unless noted; CPU = user+sys of the whole process tree; "
          "Σ RSS = peak of summed RSS of all processes, sampled every 10 ms):")
    print()
    print("\n".join(detail))
    if a.notes:
        print()
        for n in a.notes:
            print(n)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for opt in ("--tree", "--scenario", "--rep", "--timing", "--stdout"):
        r.add_argument(opt, required=True)
    r.add_argument("--tool", required=True, choices=["rdist", "rsync"])
    t = sub.add_parser("table")
    t.add_argument("results")
    t.add_argument("notes", nargs="*")
    a = ap.parse_args()
    (record if a.cmd == "record" else table)(a)


if __name__ == "__main__":
    main()
