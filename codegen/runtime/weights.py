"""The weights files behind ``Trainer.save``/``load`` and checkpoints: read and checked as a
whole before anything changes, written atomically (a reader sees the previous file or the new
one, never half of one).

Imports only NumPy: ``sb.build`` copies this file into standalone packages beside ``trainer.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import zipfile
import zlib

import numpy as np

from .values import DataError, check_hyper, to_numbers


def read_npz(path) -> tuple[dict, dict]:
    """The arrays and the ``_meta`` (a dict) of a weights file.

    Raises:
        DataError: naming ``path``: not a ``.npz`` of arrays and JSON metadata (damaged, cut short, pickles).
    """
    try:
        f = np.load(path, allow_pickle=False)
        if isinstance(f, np.lib.npyio.NpzFile):
            with f:
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("_meta"))) if "_meta" in arrays else {}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # their messages name the file
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        # numpy's hint for what it takes for pickled data is to allow pickles: never for a weights file
        why = "it holds pickled Python objects or is no NumPy file at all" if "pickle" in str(e) else \
            f"{type(e).__name__}: {e}"
        raise DataError(f"{path}: not a readable weights file (.npz from save() or a checkpoint); {why}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array (.npy), not the .npz that save() and checkpoints write")
    if not isinstance(meta, dict):
        raise DataError(f"{path}: its _meta is not a JSON object")
    return arrays, meta


def _describe(name, slots, hyper) -> str:
    return f"{name or 'an optimiser'} ({'state ' + ', '.join(sorted(slots)) if slots else 'no state'}; " \
           f"hyperparameters {', '.join(sorted(hyper))})"


def read_optimiser(tr, path, arrays: dict, meta: dict) -> dict | None:
    """The optimiser state of a weights file by slot and parameter, checked against ``tr``'s
    optimiser, hyperparameters and step count; None for a bare weights file (parameters only)."""
    written = [k for k in arrays if k.startswith("state.")]
    if "hyper" not in meta and not written:
        return None
    slots = meta.get("slots", sorted({k.split(".")[1] for k in written}))
    hyper = meta.get("hyper", {})
    if not isinstance(hyper, dict) or not isinstance(slots, list) or set(slots) != set(tr.state) \
            or set(hyper) != set(tr.hyper):
        theirs = _describe(meta.get("optimizer"), slots, hyper)
        ours = _describe(tr._optimizer_name(), tr.state, tr.hyper)
        raise DataError(f"{path}: written by {theirs}; this trainer's optimiser is {ours}. Resume with the "
                        "optimiser that wrote it, or take the weights alone: tr.load(path, weights_only=True)")
    check_hyper(hyper, str(path))
    t = meta.get("t", 0)
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise DataError(f"{path}: the step count is {t!r}; expected a non-negative int")
    shapes = tr.kernels.PARAMS
    lost = [f"state.{s}.{k}" for s in slots for k in shapes if f"state.{s}.{k}" not in arrays]
    if lost:
        raise DataError(f"{path}: the optimiser state {', '.join(map(repr, lost))} is missing")
    return {s: {k: to_numbers(path, f"optimiser state 'state.{s}.{k}'", arrays[f"state.{s}.{k}"], shape)
                for k, shape in shapes.items()} for s in slots}


def read_carries(path, arrays: dict, meta: dict) -> dict | None:
    """The carried state of stateful recurrences by loop label, as ``save`` wrote it; None
    when the file does not say (a bare weights file)."""
    counts = meta.get("carries")
    if counts is None:
        return None
    if not isinstance(counts, dict) or not all(isinstance(c, int) and c >= 0 for c in counts.values()):
        raise DataError(f"{path}: its list of carried states is damaged ({counts!r})")
    lost = [f"carry.{loop}.{k}" for loop, c in counts.items() for k in range(c) if f"carry.{loop}.{k}" not in arrays]
    if lost:
        raise DataError(f"{path}: the carried state {', '.join(map(repr, lost))} is missing")
    return {loop: tuple(to_numbers(path, f"carried state 'carry.{loop}.{k}'", arrays[f"carry.{loop}.{k}"], None)
                        for k in range(c)) for loop, c in counts.items()}


def read_buffers(tr, path, arrays: dict, meta: dict) -> dict | None:
    """The buffers (running statistics) by name, as ``save`` wrote them (``buffer.<name>``);
    None when the file does not list them (a bare weights file): the trainer keeps its own."""
    names = meta.get("buffers")
    if names is None:
        return None
    shapes = tr.buffers._shapes
    if not isinstance(names, list) or sorted(names) != sorted(shapes):
        raise DataError(f"{path}: holds the buffers {names!r}; this model's are {list(shapes)!r}")
    lost = [f"buffer.{k}" for k in names if f"buffer.{k}" not in arrays]
    if lost:
        raise DataError(f"{path}: the buffer(s) {', '.join(map(repr, lost))} are missing")
    return {k: to_numbers(path, f"buffer 'buffer.{k}'", arrays[f"buffer.{k}"], shapes[k]) for k in names}


def write_npz(path, arrays: dict) -> None:
    """``np.savez`` to ``path`` atomically: a temporary file beside it, fsync, then rename.

    A crash or kill at any point leaves either the previous file or the new one, and at
    worst a temporary file, which the next write to ``path`` removes.
    """
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    _remove_stale(folder, base)
    # the writer's pid in the name tells a later writer whether the file is a leftover
    fd, tmp = tempfile.mkstemp(prefix=f"{base}.{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a weights file is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_stale(folder: str, base: str) -> None:
    """Delete the temporary files of writes to ``base`` whose process has died (killed
    mid-write): ``<base>.<pid>.<8 random characters>.tmp``, as ``write_npz`` names them."""
    pattern = re.compile(re.escape(base) + r"\.(\d+)\.[a-z0-9_]{8}\.tmp")
    with contextlib.suppress(OSError):  # tidying only: never a reason for the write to fail
        for name in os.listdir(folder):
            found = pattern.fullmatch(name)
            if found and not _alive(int(found.group(1))):
                os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing (always True where we cannot tell)."""
    if os.name != "posix" or pid == os.getpid():
        return True  # ours; and on Windows os.kill would terminate the process, not probe it
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        pass
    return True
