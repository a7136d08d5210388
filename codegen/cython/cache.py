"""The folder of compiled modules: where it is, which entries are whole, what a killed build
left behind, and where builds go when the folder cannot be written.

The folder is ``$SYMBP_CACHE_DIR``, else ``$XDG_CACHE_HOME/symbp``, else ``~/.cache/symbp``.
An entry is a folder ``symbp_<model>_<key>`` holding the ``.pyx``, the binary and a manifest
with the binary's SHA-256. A build runs in a temporary folder beside the entries, named
``.<entry>.<host>-<pid>.<random>``, so a later build can tell one whose process died (a
SIGKILL mid-build) from one still running, and remove it. When the folder cannot be written
(read-only, full, or a file), builds go to a private temporary folder for the rest of the
process, with one warning (``private_cache``).

``graph_key`` names what a model compiles to before anything is derived or generated: a warm
start looks it up (``build.lookup``) and needs neither derivation nor SymPy.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import symbp
from symbp.ir import Node, topo_order
from symbp.ops.elementwise import Formula
from symbp.ops.hoist import enabled as hoisting

HOST = hashlib.sha256(platform.node().encode()).hexdigest()[:8]
"""Names this machine in temporary build folders: a process id means something only on its own host."""
STALE_AFTER = 24 * 3600
"""Seconds after which a temporary build folder of another host (or an unnamed one) counts as left behind."""
_TEMP = re.compile(r"\.(symbp_\w+?)\.(?:([0-9a-f]{8})-(\d+)\.)?[a-z0-9_]{8}")
_private: Path | None = None  # the temporary cache of this process, once the real one failed


def cache_dir() -> Path:
    """The cache folder the environment names (created on first build)."""
    env = os.environ.get("SYMBP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symbp"


def roots() -> list[Path]:
    """Folders to look for entries in: the cache, then this process's private one (if any)."""
    return [cache_dir(), *([_private] if _private is not None else [])]


def write_root() -> Path:
    """The folder new builds go to: the private one once the cache failed, else the cache."""
    return _private if _private is not None else cache_dir()


def private_cache(err: OSError) -> Path:
    """Switch this process's builds to a private temporary folder (deleted at exit), warning once.

    Args:
        err: why the cache could not be written.
    Returns:
        The private folder.
    Raises:
        OSError: the temporary folder cannot be made either.
    """
    global _private
    if _private is None:
        _private = Path(tempfile.mkdtemp(prefix="symbp-cache-"))
        atexit.register(shutil.rmtree, _private, True)
        warnings.warn(f"symbp: cannot write the compiled-module cache {cache_dir()} ({err}); building in the "
                      f"private temporary folder {_private} instead, which is deleted at exit, so the next run "
                      "builds again. Set SYMBP_CACHE_DIR to a writable folder with free space to keep builds.",
                      RuntimeWarning, stacklevel=4)
    return _private


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def valid(entry: Path) -> dict | None:
    """The entry's manifest when its binary is intact and its source is there, else None."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        if (entry / f"{entry.name}.pyx").is_file() and sha256(entry / manifest["binary"]) == manifest["sha256"]:
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def temp_prefix(modname: str) -> str:
    """The name prefix of a temporary build folder for entry ``modname`` made by this process."""
    return f".{modname}.{HOST}-{os.getpid()}."


def temporaries(root: Path) -> list[tuple[Path, bool]]:
    """Temporary build folders in ``root``, each with whether it is left behind (stale): its
    process on this host is gone, or it is older than ``STALE_AFTER``."""
    out = []
    with contextlib.suppress(OSError):
        for p in root.iterdir():
            found = _TEMP.fullmatch(p.name)
            if found and p.is_dir():
                host, pid, stale = found.group(2), found.group(3), False
                if host == HOST and pid is not None:
                    stale = not _alive(int(pid))
                else:
                    with contextlib.suppress(OSError):
                        stale = time.time() - p.stat().st_mtime > STALE_AFTER
                out.append((p, stale))
    return out


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # ours; and on Windows os.kill would end the process rather than probe it
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove_stale(root: Path) -> None:
    """Delete the temporary build folders that killed builds left in ``root``."""
    for p, stale in temporaries(root):
        if stale:
            shutil.rmtree(p, ignore_errors=True)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cache_info() -> dict:
    """What the cache holds.

    Returns:
        ``dir``; ``entries`` (name, bytes, valid); ``temporary``: build folders (name, bytes,
        stale: left by a killed build); ``bytes``: the total of both.
    """
    root = cache_dir()
    entries, temps = [], []
    if root.is_dir():
        for entry in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("symbp_")):
            entries.append({"name": entry.name, "bytes": _size(entry), "valid": valid(entry) is not None})
        temps = [{"name": p.name, "bytes": _size(p), "stale": stale} for p, stale in sorted(temporaries(root))]
    return {"dir": str(root), "entries": entries, "temporary": temps,
            "bytes": sum(e["bytes"] for e in entries + temps)}


def cache_clear() -> int:
    """Delete every cache entry, stale temporary build and lock file (not a build still running).

    Returns:
        How many entries went.
    """
    root = cache_dir()
    if not root.is_dir():
        return 0
    running = {p for p, stale in temporaries(root) if not stale}
    count = 0
    for p in root.iterdir():
        if p.is_dir() and p not in running:
            count += p.name.startswith("symbp_")
            shutil.rmtree(p, ignore_errors=True)
        elif p.suffix == ".lock":
            with contextlib.suppress(OSError):
                p.unlink()
    return count


CODE_FILES = ("symbp/**/*.py", "codegen/cython/*.py", "codegen/spec.py", "codegen/naming.py")
"""Globs (from the folder above ``codegen``) of the code between a forward graph and its source:
derivation, every op's rules and formulas, the passes, the equations (they annotate the code)
and this backend. A change to any of it is a new key."""


@functools.cache
def code_hash() -> str:
    """Hash of the files ``CODE_FILES`` names."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for pattern in CODE_FILES:
        for path in sorted(root.glob(pattern)):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    if h.digest() == hashlib.sha256().digest():
        raise AssertionError(f"no symbp source found under {root}")
    return h.hexdigest()


def graph_key(spec) -> str:
    """A hash of everything the generated source depends on, taken from the forward graph.

    Derivation, optimisation and emission are deterministic functions of the forward graph,
    the optimiser's structure (``Optimizer.key``), the dtype and the code (``code_hash``), so
    this key stands for the source without deriving (``Derivation.grads`` stays unbuilt) or
    importing SymPy: the cache maps it to the entry built from the source it once produced.

    Args:
        spec: a ``codegen.Spec``.
    Returns:
        Hex digest.
    """
    d = spec.derivation
    h = hashlib.sha256()
    for part in (code_hash(), symbp.__version__, spec.dtype, repr(spec.optimizer.key()),
                 repr(sorted(spec.optimizer.hyper)), d.name, repr(d.dtype),
                 repr({k: b.attrs["fill"] for k, b in d.buffers.items()}),
                 # read again when the backward loop is emitted (its weight-gradient products)
                 f"hoist={hoisting()}"):
        h.update(part.encode() + b"\0")
    _digest_graph({"loss": [d.loss], "params": list(d.params.values()), "inputs": list(d.inputs.values()),
                   "outputs": list(d.outputs.values()), "buffers": list(d.buffers.values()),
                   "updates": list(d.updates.values())}, h)
    h.update(repr((list(d.params), list(d.inputs), list(d.outputs), list(d.buffers), list(d.updates))).encode())
    return h.hexdigest()


def _digest_graph(groups: dict, h) -> None:
    """Hash the graphs reached from ``groups`` (name -> nodes) into ``h``: every node's op,
    inputs (by position), shape, dtype, attributes, name and label, and each group's members.
    An attribute holding graphs of its own (a recurrence's traced cell) is hashed the same
    way, all the way down: its repr would name only its results."""
    members = {k: [n for n in v if isinstance(n, Node)] for k, v in groups.items()}
    order = topo_order([n for v in members.values() for n in v])
    pos = {n.id: k for k, n in enumerate(order)}
    sympy = sys.modules.get("sympy")  # no SymPy loaded: no attribute can be a SymPy expression
    for n in order:
        h.update(repr((n.op, [pos[i.id] for i in n.inputs], n.shape, n.dtype, n.name, n.label)).encode())
        if isinstance(n.attrs, Formula):
            continue  # a formula not built yet: a function of the op and its arity, both hashed above
        for k, v in sorted(n.attrs.items()):
            h.update(k.encode() + b"=")
            if sympy is not None and isinstance(v, sympy.Basic):
                h.update(sympy.srepr(v).encode())
            elif dataclasses.is_dataclass(v):
                _digest_graph({f.name: _nodes_of(getattr(v, f.name)) for f in dataclasses.fields(v)}, h)
                h.update(repr(sorted((f.name, repr(getattr(v, f.name))) for f in dataclasses.fields(v)
                                     if not _nodes_of(getattr(v, f.name)))).encode())
            else:
                h.update(repr(v).encode())
            h.update(b"\0")
    for k, v in groups.items():
        h.update(repr((k, [pos[n.id] if isinstance(n, Node) else None for n in v])).encode())


def _nodes_of(value) -> list:
    """The nodes in a field of a graph-holding attribute (a node or a tuple of nodes/None)."""
    if isinstance(value, Node):
        return [value]
    if isinstance(value, (tuple, list)) and any(isinstance(x, Node) for x in value):
        return list(value)
    return []
