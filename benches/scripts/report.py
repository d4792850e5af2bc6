#!/usr/bin/env python3
"""Result records and the Markdown report for benches/compare.sh.

    report.py record --tree T --scenario S --tool rdist|rdist4|rsync|rsyncmux --rep N \\
                     [--transport local|ssh] --timing REC.json --stdout TOOL_STDOUT
        Print one TSV result line (columns: COLUMNS) built from timecmd.py's
        record and the tool's own output: rsync --stats ("Total bytes
        sent/received", "Number of regular files transferred") or rdist --json
        (wire_bytes, files_sent; the other documented keys are checked too).
        Tool rdist4 is rdist syncing to four workers on the same host; rsyncmux
        is rsync through an OpenSSH master connection (ssh only).

    report.py table RESULTS.tsv [NOTE...]
        Print Markdown tables of medians per (transport, tree, scenario), and
        for the ssh transport the 4-worker columns and the issue's targets;
        NOTE lines are printed below them. Rows written before the transport
        column existed count as local.
"""

import argparse
import json
import re
import statistics
import sys

COLUMNS = ["tree", "scenario", "tool", "rep", "wall", "bytes", "maxrss_kib", "tree_rss_kib",
           "cpu", "files_sent", "lingering", "transport"]
RDIST_KEYS = ["files_scanned", "files_sent", "files_deleted", "literal_bytes", "delta_bytes",
              "wire_bytes", "seconds"]
TREE_ORDER = ["small", "medium", "large"]
SCEN_ORDER = ["initial", "noop", "incremental"]
TRANSPORT_ORDER = ["local", "ssh"]
TRANSPORT_TITLE = {
    "local": "local (`--tx popen//chdir=DEST` vs `rsync -a --delete SRC/ DEST/`)",
    "ssh": "ssh on loopback (`--tx ssh=benchhost//chdir=DEST` vs `rsync -a --delete -e SSH SRC/ benchhost:DEST/`)",
}
# The targets of the ssh issue: wall-time ratio rdist/rsync per (tree, scenario)
# (medium is the ~5,000-file tree, large the ~50,000-file one).
SSH_TIME_TARGETS = {
    ("large", "initial"): 0.7, ("large", "noop"): 0.5, ("large", "incremental"): 0.6,
    ("medium", "initial"): 1.0, ("medium", "noop"): 1.0, ("medium", "incremental"): 1.0,
}
TARGET_KINDS = ["wall time", "bytes (rdist ≤ rsync)", "bytes rdist/rsync", "4 workers / 1 worker (rdist)"]
FANOUT_LIMIT = 1.2       # 4 workers on one host / 1 worker, wall time
NOOP_BYTES_LIMIT = 0.01  # large no-op: rdist bytes / rsync bytes


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
    nbytes, sent = (rsync_stats if a.tool.startswith("rsync") else rdist_stats)(out)
    row = [a.tree, a.scenario, a.tool, a.rep, f"{t['wall']:.6f}", nbytes,
           "" if t["maxrss_kib"] is None else t["maxrss_kib"], t["tree_rss_kib"],
           f"{t['user'] + t['sys']:.3f}", sent, t["lingering"], a.transport]
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
            r = dict(zip(COLUMNS, line.rstrip("\n").split("\t")))
            r.setdefault("transport", "local")
            rows.append(r)
    if not rows:
        die("no results")
    groups = {}
    for r in rows:
        key = (r["transport"], r["tree"], r["scenario"])
        groups.setdefault(key, {}).setdefault(r["tool"], []).append(r)

    def med(rs, key, conv=float):
        vals = [conv(r[key]) for r in rs if r[key] != ""]
        return statistics.median(vals) if vals else None

    def order(k):
        tr, tree, scen = k
        return (TRANSPORT_ORDER.index(tr) if tr in TRANSPORT_ORDER else 99, tr,
                TREE_ORDER.index(tree) if tree in TREE_ORDER else 99, tree,
                SCEN_ORDER.index(scen) if scen in SCEN_ORDER else 99, scen)

    def span(rs):
        if not rs:
            return "-"
        w = [float(x["wall"]) for x in rs]
        return f"{fmt_s(min(w))}-{fmt_s(max(w))}"

    def sent(rs):
        v = med(rs, "files_sent", int)
        return "-" if v is None else f"{v:g}"

    transports = sorted({k[0] for k in groups},
                        key=lambda t: TRANSPORT_ORDER.index(t) if t in TRANSPORT_ORDER else 99)
    out = []
    targets = []
    for tr in transports:
        fan = any("rdist4" in g for k, g in groups.items() if k[0] == tr)
        mux = any("rsyncmux" in g for k, g in groups.items() if k[0] == tr)
        keys = sorted((k for k in groups if k[0] == tr), key=order)
        if len(transports) > 1 or tr != "local":
            out += [f"**{TRANSPORT_TITLE.get(tr, tr)}**", ""]
        main = ["| tree | scenario | rdist s | rsync s | rdist/rsync "
                + ("| rsync+mux s | rdist/rsync+mux " if mux else "")
                + "| rdist bytes | rsync bytes "
                + ("| rdist 4 workers s | 4 workers/1 " if fan else "")
                + "| rdist peak RSS | rsync peak RSS |",
                "|---|---|--:|--:|--:|" + ("--:|--:|" if mux else "") + "--:|--:|"
                + ("--:|--:|" if fan else "") + "--:|--:|"]
        detail = ["| tree | scenario | runs | rdist s min-max | rsync s min-max "
                  + ("| rdist 4w s min-max " if fan else "")
                  + "| rdist CPU s | rsync CPU s | rdist Σ RSS | rsync Σ RSS | rdist files sent | rsync files sent |",
                  "|---|---|--:|--:|--:|" + ("--:|" if fan else "") + "--:|--:|--:|--:|--:|--:|"]
        for key in keys:
            g = groups[key]
            d, r, d4 = g.get("rdist", []), g.get("rsync", []), g.get("rdist4", [])
            dw, rw, d4w = med(d, "wall"), med(r, "wall"), med(d4, "wall")
            ratio = f"{dw / rw:.2f}×" if dw is not None and rw else "-"
            mux_cols = ""
            if mux:
                mw = med(g.get("rsyncmux", []), "wall")
                mr = f"{dw / mw:.2f}×" if dw is not None and mw else "-"
                mux_cols = f"| {fmt_s(mw)} | {mr} "
            fan_cols = ""
            if fan:
                fr = f"{d4w / dw:.2f}×" if d4w is not None and dw else "-"
                fan_cols = f"| {fmt_s(d4w)} | {fr} "
            main.append(f"| {key[1]} | {key[2]} | {fmt_s(dw)} | {fmt_s(rw)} | {ratio} "
                        + mux_cols
                        + f"| {fmt_bytes(med(d, 'bytes'))} | {fmt_bytes(med(r, 'bytes'))} "
                        + fan_cols
                        + f"| {fmt_kib(med(d, 'maxrss_kib'))} | {fmt_kib(med(r, 'maxrss_kib'))} |")
            detail.append(f"| {key[1]} | {key[2]} | {max(len(d), len(r), len(d4))} | {span(d)} | {span(r)} "
                          + (f"| {span(d4)} " if fan else "")
                          + f"| {fmt_s(med(d, 'cpu'))} | {fmt_s(med(r, 'cpu'))} "
                          f"| {fmt_kib(med(d, 'tree_rss_kib'))} | {fmt_kib(med(r, 'tree_rss_kib'))} "
                          f"| {sent(d)} | {sent(r)} |")
            if tr == "ssh":
                targets += ssh_targets(key[1], key[2], dw, rw, d4w,
                                       med(d, "bytes"), med(r, "bytes"))
        out += main + ["", "Details (medians unless noted; CPU = user+sys of the whole process tree; "
                       "Σ RSS = peak of summed RSS of all processes, sampled every 10 ms"
                       + ("; for ssh both count only the local side: the tool and its ssh client, "
                          "not what sshd runs" if tr == "ssh" else "") + "):", ""] + detail + [""]
    if targets:
        out += ["Targets of the ssh issue (medians; wall-time ratios are rdist/rsync unless noted):", "",
                "| target | tree | scenario | measured | limit | met |",
                "|---|---|---|--:|--:|---|"] + [r for _, r in sorted(targets)] + [""]
    print("\n".join(out).rstrip("\n"))
    if a.notes:
        print()
        for n in a.notes:
            print(n)


def ssh_targets(tree, scen, dw, rw, d4w, db, rb):
    """Rows of the targets table for one (tree, scenario) of the ssh transport."""
    rows = []

    def row(what, measured, limit, ok, cmp):
        key = (TARGET_KINDS.index(what), TREE_ORDER.index(tree) if tree in TREE_ORDER else 99,
               SCEN_ORDER.index(scen) if scen in SCEN_ORDER else 99)
        rows.append((key, f"| {what} | {tree} | {scen} | {measured} | {cmp} {limit} "
                          f"| {'-' if ok is None else ('yes' if ok else '**no**')} |"))
    lim = SSH_TIME_TARGETS.get((tree, scen))
    if lim is not None:
        ok = None if dw is None or not rw else dw / rw <= lim
        row("wall time", "-" if ok is None else f"{dw / rw:.2f}×", f"{lim:.2f}×", ok, "≤")
    if scen == "incremental" and tree in ("medium", "large"):
        ok = None if db is None or rb is None else db <= rb
        row("bytes (rdist ≤ rsync)", f"{fmt_bytes(db)} vs {fmt_bytes(rb)}", "rsync's", ok, "≤")
    if scen == "noop" and tree == "large":
        ok = None if db is None or not rb else db / rb < NOOP_BYTES_LIMIT
        row("bytes rdist/rsync", "-" if ok is None else f"{100 * db / rb:.3f}%",
            f"{100 * NOOP_BYTES_LIMIT:g}%", ok, "<")
    if d4w is not None and dw:
        row("4 workers / 1 worker (rdist)", f"{d4w / dw:.2f}×", f"{FANOUT_LIMIT:.1f}×",
            d4w / dw < FANOUT_LIMIT, "<")
    return rows


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for opt in ("--tree", "--scenario", "--rep", "--timing", "--stdout"):
        r.add_argument(opt, required=True)
    r.add_argument("--tool", required=True, choices=["rdist", "rdist4", "rsync", "rsyncmux"])
    r.add_argument("--transport", default="local", choices=["local", "ssh"])
    t = sub.add_parser("table")
    t.add_argument("results")
    t.add_argument("notes", nargs="*")
    a = ap.parse_args()
    (record if a.cmd == "record" else table)(a)


if __name__ == "__main__":
    main()
