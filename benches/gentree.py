#!/usr/bin/env python3
"""Deterministic synthetic Python-project trees for the rdist-vs-rsync benchmark.

    gentree.py NAME DIR          generate tree NAME ("small", "medium", "large")
                                 into DIR (must be absent or empty)
    gentree.py --digest DIR      print a digest of DIR (paths, modes, mtimes,
                                 contents) - used to check determinism
    gentree.py --list            list the profiles

The output depends only on NAME and GEN_VERSION (fixed seeds, no clock, no
environment), including file modes and mtimes. Pure python, no dependencies.

Besides DIR, a manifest DIR.manifest.json is written next to it (outside the
synced tree) with counts and the path of the 20 MiB blob; benches/mutate.py
and compare.sh read it.

Each tree looks like a Python project: pyproject.toml at the top, a src/
package hierarchy with __init__.py files, tests/ mirroring it, docs/, scripts/
(executable), data files (text and binary), a few large binary blobs, a few
empty files and empty directories. It also contains noise that the sync must
exclude (patterns `.*`, `*.pyc`, `*.pyo`, `*~`): .git/ with loose objects and
a pack, .tox/, .pytest_cache/, .mypy_cache/, __pycache__/*.pyc, stray *.pyo,
editor backups `*~`, dotfiles.
"""

import hashlib
import json
import math
import os
import random
import stat
import sys
import time

GEN_VERSION = 1
KiB = 1024
MiB = 1024 * 1024

# Fixed mtime for every generated file/dir (2023-11-14T22:13:20Z), plus a
# deterministic per-file jitter of up to ~30 days.
MTIME_BASE = 1_700_000_000
MTIME_JITTER = 30 * 86400

BLOB20_NAME = "big-20MiB.bin"

# Per-profile knobs. "modules" = python modules under src/ (excl. __init__),
# sizes are log-normal with the given median, clipped to [lo, hi].
PROFILES = {
    "small": dict(
        modules=85, modules_per_pkg=9, max_depth=3,
        test_frac=0.6, docs=12, scripts=3,
        data_text=10, data_bin=8, data_median=20 * KiB, data_hi=300 * KiB,
        blobs=[],
        pyc_frac=0.5, pyo=2, backups=3,
        git_loose=20, git_pack=256 * KiB, tox_files=12, empty_dirs=2,
    ),
    "medium": dict(
        modules=1480, modules_per_pkg=10, max_depth=4,
        test_frac=0.6, docs=120, scripts=10,
        data_text=80, data_bin=90, data_median=100 * KiB, data_hi=1 * MiB,
        blobs=[4 * MiB],
        pyc_frac=0.6, pyo=10, backups=30,
        git_loose=300, git_pack=14 * MiB, tox_files=250, empty_dirs=6,
    ),
    "large": dict(
        modules=14800, modules_per_pkg=11, max_depth=5,
        test_frac=0.6, docs=900, scripts=40,
        data_text=800, data_bin=900, data_median=100 * KiB, data_hi=1 * MiB,
        blobs=[20 * MiB, 12 * MiB, 8 * MiB, 6 * MiB, 4 * MiB],
        pyc_frac=0.6, pyo=60, backups=300,
        git_loose=3000, git_pack=110 * MiB, tox_files=2500, empty_dirs=20,
    ),
}
# Source-file size distribution (bytes): log-normal, clipped.
SRC_MEDIAN, SRC_SIGMA, SRC_LO, SRC_HI = 3800, 1.0, 100, 50 * KiB

SYLLABLES = [
    "al", "ba", "co", "de", "el", "fa", "ge", "hi", "in", "jo", "ka", "lu",
    "ma", "ne", "or", "pi", "qu", "ra", "se", "ti", "ur", "ve", "wi", "xo",
    "ya", "ze", "st", "tr", "pl", "cr", "ch", "sh", "th", "gr", "fl", "br",
]

CODE_TEMPLATES = [
    "def {a}_{b}({c}, {d}=None):",
    "def {a}({b}, *args, **kwargs):",
    "async def {a}_{b}(self, {c}: {C}) -> {D}:",
    '    """{A} the {b} of {c} using {d}."""',
    "    {a} = {b}.{c}({d})",
    "    {a}_{b} = {c}[{n}:{m}]",
    "    if {a} is None:",
    "    if not {a}.{b}({c}):",
    "        return {b}",
    "        return {a}({b}, {c}={n})",
    "    for {a} in {b}.{c}():",
    "        {a}.{b}({c}={d!r})",
    "        {a}[{b!r}] = {c}",
    "    while {a} < {n}:",
    "        {a} += {m}",
    "    try:",
    "        {a} = self.{b}[{c!r}]",
    "    except {A}Error as exc:",
    "        raise {A}{B}Error({a!r}) from exc",
    "    with open({a}, {b!r}) as {c}:",
    "    return {{{a!r}: {b}, {c!r}: {n}}}",
    "    return [{a} for {a} in {b} if {a}.{c}]",
    "class {A}{B}({C}):",
    "class {A}{B}:",
    "    {a}_{b}: int = {n}",
    "    {a}: {C} | None = None",
    "    @property",
    "    @staticmethod",
    "    def __init__(self, {a}, {b}={n}):",
    "        self.{a} = {a}",
    "        self._{b} = {b}",
    "        super().__init__({a}={a})",
    "    # {A} {b} {c} {d}: {e} {n}.",
    "# {A} {b} {c} {d} {e}.",
    "        log.debug({a!r}, {b}, {c})",
    "        assert {a} == {b}, {c!r}",
    "{A}_{B} = {n}",
    "",
    "",
    "",
]
TEST_TEMPLATES = [
    "def test_{a}_{b}({c}):",
    "def test_{a}_{b}_{c}(tmp_path, {d}):",
    "@pytest.mark.parametrize({a!r}, [{n}, {m}, None])",
    "@pytest.fixture",
    "def {a}():",
    "    {a} = {b}({c}={n})",
    "    assert {a}.{b}({c}) == {n}",
    "    assert {a} is not None",
    "    with pytest.raises({A}Error):",
    "        {a}.{b}({c!r})",
    "    result = {a}_{b}(tmp_path / {c!r})",
    "    assert result == {{{a!r}: {n}}}",
    "    # {A} {b} {c} {d}.",
    "",
    "",
]
DOC_TEMPLATES = [
    "{A} {b} {c} {d} {e} {f} {a} {c} and {d} {e}.",
    "The ``{a}_{b}`` option controls how {c} {d} are {e}.",
    ".. autofunction:: {a}.{b}.{c}",
    ".. code-block:: python",
    "    {a} = {b}({c}={n})",
    "* :func:`{a}_{b}` - {c} {d} {e}",
    "{A} {B}",
    "~~~~~~~~~~~~~~~~~~~~",
    "",
    "",
]


class Gen:
    def __init__(self, name, root):
        self.name = name
        self.root = root
        self.cfg = PROFILES[name]
        self.rng = random.Random(f"rdist-bench/{GEN_VERSION}/{name}")
        self.files = []  # (rel, size) of everything written
        self.synced = 0
        self.synced_bytes = 0
        self.noise = 0
        self.noise_bytes = 0
        self.dirs = set()
        self.blob20 = None
        self.words = self._make_words(600)
        self.code_pool = self._make_pool(CODE_TEMPLATES, 8000)
        self.test_pool = self._make_pool(TEST_TEMPLATES, 3000)
        self.doc_pool = self._make_pool(DOC_TEMPLATES, 3000)

    # ---------------------------------------------------------------- content
    def _make_words(self, n):
        rng, seen, out = self.rng, set(), []
        while len(out) < n:
            w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
            if w not in seen:
                seen.add(w)
                out.append(w)
        return out

    def _make_pool(self, templates, n):
        rng, words = self.rng, self.words
        pool = []
        for _ in range(n):
            t = rng.choice(templates)
            ws = rng.sample(words, 6)
            pool.append(t.format(
                a=ws[0], b=ws[1], c=ws[2], d=ws[3], e=ws[4], f=ws[5],
                A=ws[0].capitalize(), B=ws[1].capitalize(),
                C=ws[2].capitalize(), D=ws[3].capitalize(),
                n=rng.randint(0, 4096), m=rng.randint(1, 64)) + "\n")
        return pool

    def text(self, pool, size, header=""):
        """About `size` bytes of lines drawn from `pool` (avg ~35 B/line)."""
        if size <= 0:
            return b""
        body = "".join(self.rng.choices(pool, k=max(1, size // 34)))
        data = (header + body).encode()
        if len(data) > size:
            cut = data.rfind(b"\n", 0, size)
            data = data[: cut + 1] if cut > 0 else data[:size]
        return data

    def lognorm(self, median, sigma, lo, hi):
        v = self.rng.lognormvariate(math.log(median), sigma)
        return int(min(hi, max(lo, v)))

    def ident(self):
        return self.rng.choice(self.words)

    # ---------------------------------------------------------------- writing
    def write(self, rel, data, noise=False, mode=0o644):
        path = os.path.join(self.root, rel)
        d = os.path.dirname(path)
        if d not in self.dirs:
            os.makedirs(d, exist_ok=True)
            self.dirs.add(d)
        with open(path, "wb") as f:
            f.write(data)
        if mode != 0o644:
            os.chmod(path, mode)
        mt = MTIME_BASE + self.rng.randrange(MTIME_JITTER)
        os.utime(path, ns=(mt * 10**9, mt * 10**9))
        self.files.append((rel, len(data)))
        if noise:
            self.noise += 1
            self.noise_bytes += len(data)
        else:
            self.synced += 1
            self.synced_bytes += len(data)

    def mkdir(self, rel):
        path = os.path.join(self.root, rel)
        os.makedirs(path, exist_ok=True)
        self.dirs.add(path)

    # ---------------------------------------------------------------- layout
    def generate(self):
        cfg, rng = self.cfg, self.rng
        proj = f"acme_{self.name}"
        self.top_files(proj)

        # Package hierarchy: each new package hangs off a random existing one
        # (bounded depth), modules are then scattered over the packages.
        n_pkgs = max(2, cfg["modules"] // cfg["modules_per_pkg"])
        pkgs = [(f"src/{proj}", 0)]
        used = {f"src/{proj}"}
        while len(pkgs) < n_pkgs:
            parent, depth = rng.choice(pkgs)
            if depth >= cfg["max_depth"]:
                continue
            p = f"{parent}/{self.ident()}"
            if p in used:
                continue
            used.add(p)
            pkgs.append((p, depth + 1))
        modules = {p: [] for p, _ in pkgs}
        names = {p: set() for p, _ in pkgs}
        for _ in range(cfg["modules"]):
            p, _ = rng.choice(pkgs)
            while True:
                m = f"{self.ident()}_{self.ident()}" if rng.random() < 0.5 else self.ident()
                if m not in names[p]:
                    names[p].add(m)
                    break
            modules[p].append(m)

        for p, _ in pkgs:
            init_size = 0 if rng.random() < 0.3 else self.lognorm(400, 1.0, 60, 8 * KiB)
            self.write(f"{p}/__init__.py", self.text(self.code_pool, init_size,
                                                       f'"""{p.replace("/", ".")}."""\n' if init_size else ""))
            for m in modules[p]:
                size = self.lognorm(SRC_MEDIAN, SRC_SIGMA, SRC_LO, SRC_HI)
                header = f'"""{m} - {self.ident()} {self.ident()} helpers."""\nfrom __future__ import annotations\n\nimport os\n'
                data = self.text(self.code_pool, size, header)
                self.write(f"{p}/{m}.py", data)
                if rng.random() < cfg["pyc_frac"]:
                    pyc = b"\xa7\r\r\n\0\0\0\0" + rng.randbytes(max(16, len(data) * 6 // 10))
                    self.write(f"{p}/__pycache__/{m}.cpython-311.pyc", pyc, noise=True)
            # package-local data (json/csv) now and then
            if rng.random() < 0.15:
                self.write(f"{p}/data/{self.ident()}.json",
                           self.text(self.doc_pool, self.lognorm(2000, 1.0, 100, 40 * KiB), "{\n"))

        # tests/ mirrors the package tree
        self.write("tests/__init__.py", b"")
        self.write("tests/conftest.py", self.text(self.test_pool, 3000, "import pytest\n\n"))
        for p, depth in pkgs:
            tdir = "tests" + p[len(f"src/{proj}"):]
            mods = [m for m in modules[p] if rng.random() < cfg["test_frac"]]
            if not mods and depth:
                continue
            if tdir != "tests":
                self.write(f"{tdir}/__init__.py", b"")
                if rng.random() < 0.2:
                    self.write(f"{tdir}/conftest.py",
                               self.text(self.test_pool, self.lognorm(1500, 0.8, 100, 20 * KiB), "import pytest\n\n"))
            for m in mods:
                data = self.text(self.test_pool, self.lognorm(SRC_MEDIAN, SRC_SIGMA, SRC_LO, SRC_HI),
                                 f"import pytest\n\nfrom {p[4:].replace('/', '.')} import {m}\n\n")
                self.write(f"{tdir}/test_{m}.py", data)
                if rng.random() < cfg["pyc_frac"]:
                    self.write(f"{tdir}/__pycache__/test_{m}.cpython-311-pytest-8.3.4.pyc",
                               rng.randbytes(max(16, len(data) * 7 // 10)), noise=True)
            if rng.random() < 0.1:
                for i in range(rng.randint(1, 6)):
                    self.write(f"{tdir}/fixtures/{self.ident()}_{i}.bin",
                               rng.randbytes(self.lognorm(4 * KiB, 1.2, 100, 200 * KiB)))

        # docs/
        self.write("docs/conf.py", self.text(self.code_pool, 2500, "project = 'acme'\n"))
        for i in range(cfg["docs"]):
            sub = rng.choice(["", "api/", "guide/", "howto/", "reference/deep/"])
            self.write(f"docs/{sub}{self.ident()}_{i}.rst",
                       self.text(self.doc_pool, self.lognorm(5000, 1.0, 200, 50 * KiB), f"{self.ident()}\n=====\n\n"))
            if rng.random() < 0.08:
                self.write(f"docs/_static/img_{i}.png",
                           b"\x89PNG\r\n\x1a\n" + rng.randbytes(self.lognorm(30 * KiB, 1.0, 500, 500 * KiB)))

        # scripts/ (executable)
        for i in range(cfg["scripts"]):
            self.write(f"scripts/{self.ident()}_{i}.sh",
                       self.text(self.doc_pool, self.lognorm(1200, 0.8, 100, 10 * KiB), "#!/bin/sh\nset -eu\n"),
                       mode=0o755)

        # data files: text (csv/json) and binary (npy/bin/parquet-ish)
        for i in range(cfg["data_text"]):
            ext = rng.choice(["csv", "json", "txt", "yaml"])
            self.write(f"data/{rng.choice(['raw', 'processed', 'ref'])}/{self.ident()}_{i}.{ext}",
                       self.text(self.doc_pool, self.lognorm(cfg["data_median"] // 4, 1.2, 100, cfg["data_hi"])))
        for i in range(cfg["data_bin"]):
            ext = rng.choice(["npy", "bin", "parquet", "pkl", "h5"])
            self.write(f"data/{rng.choice(['raw', 'processed', 'arrays'])}/{self.ident()}_{i}.{ext}",
                       rng.randbytes(self.lognorm(cfg["data_median"], 1.2, 1 * KiB, cfg["data_hi"])))

        # large blobs
        for i, size in enumerate(cfg["blobs"]):
            rel = f"data/blobs/{BLOB20_NAME}" if size == 20 * MiB else f"data/blobs/blob{i}-{size // MiB}MiB.bin"
            self.write(rel, rng.randbytes(size))
            if size == 20 * MiB:
                self.blob20 = rel

        # a few empty files and empty dirs (must be mirrored too)
        self.write("src/py.typed", b"")
        self.write("data/raw/.keep", b"", noise=True)
        for i in range(cfg["empty_dirs"]):
            self.mkdir(f"{rng.choice(['data', 'docs', 'tests', f'src/{proj}'])}/empty_{self.ident()}_{i}")

        self.noise_files(pkgs)

    def top_files(self, proj):
        self.write("pyproject.toml", (
            f'[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{proj}"\nversion = "0.{GEN_VERSION}.0"\nrequires-python = ">=3.9"\n'
            f'dependencies = ["requests", "attrs"]\n\n[tool.pytest.ini_options]\n'
            f'testpaths = ["tests"]\naddopts = "-ra"\n').encode())
        self.write("README.md", self.text(self.doc_pool, 6000, f"# {proj}\n\nSynthetic benchmark project.\n\n"))
        self.write("CHANGELOG.md", self.text(self.doc_pool, 12000, "# Changelog\n\n"))
        self.write("LICENSE", self.text(self.doc_pool, 1100, "MIT License\n\n"))
        self.write("tox.ini", b"[tox]\nenvlist = py311\n\n[testenv]\ncommands = pytest {posargs}\n")
        self.write("setup.cfg", b"[flake8]\nmax-line-length = 100\n")
        self.write("conftest.py", self.text(self.test_pool, 800, "import pytest\n\n"))
        for rel in (".gitignore", ".editorconfig", ".pre-commit-config.yaml", ".coveragerc",
                    ".github/workflows/ci.yml"):
            self.write(rel, self.text(self.doc_pool, 400), noise=True)
        self.write(".coverage", self.rng.randbytes(50 * KiB), noise=True)

    def noise_files(self, pkgs):
        cfg, rng = self.cfg, self.rng
        # editor backups: slightly different copies of some source files
        py = [(rel, size) for rel, size in self.files if rel.endswith(".py") and size > 200]
        for rel, _ in rng.sample(py, min(cfg["backups"], len(py))):
            with open(os.path.join(self.root, rel), "rb") as f:
                data = f.read()
            self.write(rel + "~", data[: len(data) // 2] + b"# wip\n" + data[len(data) // 2:], noise=True)
        # stray compiled files outside __pycache__
        for i in range(cfg["pyo"]):
            p, _ = rng.choice(pkgs)
            self.write(f"{p}/legacy_{i}.pyo", rng.randbytes(self.lognorm(3000, 1.0, 100, 40 * KiB)), noise=True)
            self.write(f"{p}/legacy_{i}.pyc", rng.randbytes(self.lognorm(3000, 1.0, 100, 40 * KiB)), noise=True)
        # .git with loose objects and one pack
        for rel, data in (("HEAD", b"ref: refs/heads/main\n"),
                          ("config", b"[core]\n\trepositoryformatversion = 0\n\tbare = false\n"),
                          ("description", b"Unnamed repository\n"),
                          ("refs/heads/main", rng.randbytes(20).hex().encode() + b"\n"),
                          ("hooks/pre-commit.sample", b"#!/bin/sh\nexit 0\n"),
                          ("index", rng.randbytes(min(64 * len(self.files), 8 * MiB))),
                          ("logs/HEAD", self.text(self.doc_pool, 4000))):
            self.write(f".git/{rel}", data, noise=True)
        for _ in range(cfg["git_loose"]):
            h = rng.randbytes(20).hex()
            self.write(f".git/objects/{h[:2]}/{h[2:]}",
                       b"x\x01" + rng.randbytes(self.lognorm(1500, 1.2, 30, 200 * KiB)), noise=True)
        h = rng.randbytes(20).hex()
        self.write(f".git/objects/pack/pack-{h}.pack", b"PACK" + rng.randbytes(cfg["git_pack"]), noise=True)
        self.write(f".git/objects/pack/pack-{h}.idx", rng.randbytes(max(1024, cfg["git_pack"] // 40)), noise=True)
        # .tox virtualenv
        site = ".tox/py311/lib/python3.11/site-packages"
        self.write(".tox/py311/bin/python", b"#!/bin/sh\nexec python3 \"$@\"\n", noise=True, mode=0o755)
        self.write(".tox/py311/pyvenv.cfg", b"home = /usr/bin\nversion = 3.11.7\n", noise=True)
        for i in range(cfg["tox_files"]):
            kind = rng.random()
            dist = f"{self.ident()}{i % 37}"
            if kind < 0.6:
                self.write(f"{site}/{dist}/{self.ident()}_{i}.py",
                           self.text(self.code_pool, self.lognorm(SRC_MEDIAN, SRC_SIGMA, SRC_LO, SRC_HI)), noise=True)
            elif kind < 0.9:
                self.write(f"{site}/{dist}/__pycache__/{self.ident()}_{i}.cpython-311.pyc",
                           rng.randbytes(self.lognorm(3000, 1.0, 100, 40 * KiB)), noise=True)
            else:
                self.write(f"{site}/{dist}-1.0.dist-info/RECORD_{i}",
                           self.text(self.doc_pool, self.lognorm(800, 1.0, 100, 8 * KiB)), noise=True)
        # misc tool caches
        self.write(".pytest_cache/v/cache/lastfailed", b"{}\n", noise=True)
        self.write(".pytest_cache/v/cache/nodeids", self.text(self.test_pool, 20000), noise=True)
        for i in range(max(2, cfg["modules"] // 100)):
            self.write(f".mypy_cache/3.11/{self.ident()}_{i}.data.json",
                       self.text(self.doc_pool, self.lognorm(4000, 1.0, 100, 50 * KiB)), noise=True)
        # dotfiles/dirs inside the package tree
        for i in range(max(1, cfg["modules"] // 400)):
            p, _ = rng.choice(pkgs)
            self.write(f"{p}/.DS_Store", rng.randbytes(6 * KiB), noise=True)
            self.write(f"{p}/.{self.ident()}.swp", rng.randbytes(12 * KiB), noise=True)

    def finish(self):
        # directory mtimes last (bottom-up walk, so setting a child's mtime
        # cannot disturb its parent's), so they are deterministic too
        mt = MTIME_BASE * 10**9
        for dirpath, _, _ in os.walk(self.root, topdown=False):
            os.utime(dirpath, ns=(mt, mt))


def digest(root):
    """Digest of names, types, modes, mtimes and contents (sorted walk)."""
    h = hashlib.blake2b(digest_size=16)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d + "/" for d in dirnames]:
            p = os.path.join(dirpath, name.rstrip("/"))
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISDIR(st.st_mode):
                h.update(f"D {rel} {st.st_mode:o} {st.st_mtime_ns}\n".encode())
                continue
            h.update(f"F {rel} {st.st_mode:o} {st.st_mtime_ns} {st.st_size}\n".encode())
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def main(argv):
    if len(argv) == 1 and argv[0] == "--list":
        for name in PROFILES:
            print(name)
        return 0
    if len(argv) == 2 and argv[0] == "--digest":
        print(digest(argv[1]))
        return 0
    if len(argv) != 2 or argv[0] not in PROFILES:
        print(__doc__, file=sys.stderr)
        return 2
    name, root = argv[0], os.path.abspath(argv[1])
    if os.path.exists(root) and os.listdir(root):
        print(f"gentree: {root} exists and is not empty", file=sys.stderr)
        return 1
    os.makedirs(root, exist_ok=True)
    os.umask(0o022)
    t0 = time.perf_counter()
    g = Gen(name, root)
    g.generate()
    g.finish()
    secs = time.perf_counter() - t0
    manifest = dict(
        name=name, gen_version=GEN_VERSION,
        files_total=len(g.files), bytes_total=g.synced_bytes + g.noise_bytes,
        files_synced=g.synced, bytes_synced=g.synced_bytes,
        files_excluded=g.noise, bytes_excluded=g.noise_bytes,
        dirs=sum(len(d) for _, d, _ in os.walk(root)), blob20=g.blob20, gen_seconds=round(secs, 2),
    )
    with open(root.rstrip("/") + ".manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"gentree: {name}: {len(g.files)} files, {manifest['bytes_total'] / MiB:.1f} MiB "
          f"({g.synced} files / {g.synced_bytes / MiB:.1f} MiB synced, "
          f"{g.noise} files / {g.noise_bytes / MiB:.1f} MiB excluded noise) in {secs:.1f}s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
