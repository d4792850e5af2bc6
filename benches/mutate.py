#!/usr/bin/env python3
"""Deterministic, exactly reversible mutation of a generated tree.

    mutate.py apply   TREE STATE   mutate TREE, remember how to undo it in STATE
    mutate.py restore TREE STATE   undo the mutation recorded in STATE, delete STATE

The mutation is the "developer edited a few files" round of the benchmark:
  * 1% of the synced text files (at least 1), picked with a fixed seed from
    the sorted list of candidates, get one line appended;
  * if the tree has the 20 MiB blob (see TREE.manifest.json), 4 KiB in its
    middle are overwritten with different bytes.
Mutated files get a fixed mtime (MUT_MTIME), so every repetition produces
byte- and metadata-identical sources. `restore` truncates the appended files
back, writes the saved 4 KiB back and resets the original mtimes, so the tree
is exactly the generated one again (gentree.py --digest is unchanged).

Candidates are regular files outside anything the sync excludes (`.*`,
`*.pyc`, `*.pyo`, `*~`) with a text extension.
"""

import base64
import fnmatch
import json
import os
import random
import sys

SEED = "rdist-bench/mutate/1"
FRACTION = 0.01
LINE = b"# rdist-bench: appended line for the incremental round\n"
BLOB_CHUNK = 4096
MUT_MTIME = 1_710_000_000  # fixed, later than every generated mtime
TEXT_EXT = {".py", ".rst", ".md", ".txt", ".csv", ".json", ".yaml", ".toml", ".cfg", ".ini", ".sh"}
EXCLUDES = (".*", "*.pyc", "*.pyo", "*~")


def excluded(name):
    return any(fnmatch.fnmatchcase(name, pat) for pat in EXCLUDES)


def candidates(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not excluded(d))
        for name in sorted(filenames):
            if excluded(name) or os.path.splitext(name)[1] not in TEXT_EXT:
                continue
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    out.sort()
    return out


def apply(root, state_path):
    if os.path.exists(state_path):
        sys.exit(f"mutate: {state_path} exists: tree already mutated (run restore)")
    cands = candidates(root)
    if not cands:
        sys.exit(f"mutate: no candidate files in {root}")
    rng = random.Random(SEED)
    n = max(1, round(len(cands) * FRACTION))
    picked = sorted(rng.sample(cands, n))
    manifest_path = root.rstrip("/") + ".manifest.json"
    blob = None
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            blob = json.load(f).get("blob20")

    state = {"files": [], "blob": None}
    for rel in picked:
        st = os.stat(os.path.join(root, rel))
        state["files"].append([rel, st.st_size, st.st_mtime_ns])
    if blob:
        p = os.path.join(root, blob)
        st = os.stat(p)
        off = (st.st_size // 2) // BLOB_CHUNK * BLOB_CHUNK
        with open(p, "rb") as f:
            f.seek(off)
            orig = f.read(BLOB_CHUNK)
        state["blob"] = [blob, off, base64.b64encode(orig).decode(), st.st_mtime_ns]
    # write the undo information before touching anything
    tmp = state_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_path)

    mt = MUT_MTIME * 10**9
    for rel, _, _ in state["files"]:
        p = os.path.join(root, rel)
        with open(p, "ab") as f:
            f.write(LINE)
        os.utime(p, ns=(mt, mt))
    if state["blob"]:
        rel, off, orig, _ = state["blob"]
        new = bytes(b ^ 0x5A for b in base64.b64decode(orig))  # differs in every byte
        p = os.path.join(root, rel)
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(new)
        os.utime(p, ns=(mt, mt))
    print(f"mutate: appended a line to {len(picked)} of {len(cands)} text files"
          + (f", changed {BLOB_CHUNK} B at offset {state['blob'][1]} of {blob}" if blob else ""),
          file=sys.stderr)


def restore(root, state_path):
    with open(state_path) as f:
        state = json.load(f)
    for rel, size, mtime_ns in state["files"]:
        p = os.path.join(root, rel)
        os.truncate(p, size)
        os.utime(p, ns=(mtime_ns, mtime_ns))
    if state["blob"]:
        rel, off, orig, mtime_ns = state["blob"]
        p = os.path.join(root, rel)
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(base64.b64decode(orig))
        os.utime(p, ns=(mtime_ns, mtime_ns))
    os.unlink(state_path)


def main(argv):
    if len(argv) != 3 or argv[0] not in ("apply", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, root, state_path = argv
    root = os.path.abspath(root)
    (apply if cmd == "apply" else restore)(root, state_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
