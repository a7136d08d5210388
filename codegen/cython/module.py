"""The ``.pyx`` text around the generated C: the module's Python surface.

The surface matches the NumPy backend's module (constants, ``gradients``, ``loss``,
``predict``, ``step``) so ``codegen.runtime.Trainer`` drives both the same way. The
caller's arrays reach C through the buffer protocol, checked for size, type and contiguity
on every call (a wrong array is a Python error, never a write out of bounds); the buffers,
allocated once per batch size in the caller's workspace (``codegen.runtime.trainer.Workspace``,
the last argument of every function: a module is shared by all trainers of its model and runs
its kernels with the GIL released, so it keeps no buffers of its own), are passed by address. No typed memoryviews,
whose utility code would triple the C that gcc has to compile.
"""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
import types
from pathlib import Path

from codegen.spec import LABEL_ERROR

NAMES = {"gradients": 0, "loss": 1, "predict": 2, "update": 3, "evaluate": 4}
BEGIN, END = "/* symbp:kernels-begin */", "/* symbp:kernels-end */"
"""Markers around the C kernels, which codegen.cython.build compiles as their own file (:func:`kernels_of`)."""

_PRELUDE = '''\
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from libc.math cimport isfinite
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport {gemm} as _gemm

import numpy as np
'''

_RUNTIME = '''
def _prepare(dict mem, int fn, long B):
    """Buffers of function ``fn`` for batch size B (allocated once, in ``mem``: the caller's
    workspace table for B, so trainers never share them), the expected
    (bytes, itemsize, kind, writable) of every caller's array it takes, and the buffers'
    addresses packed as C pointers: they are right by construction, so a call checks only
    the caller's arrays (checking all ~30 arrays of a CNN step cost ~6 us a call)."""
    got = mem.get(fn)
    if got is None:
        bufs, meta = [], []
        for src, shape, kind in _ARRAYS[fn]:
            dims = tuple(B if d is None else d for d in shape)
            dt = np.dtype(DTYPE if kind == 'f' else np.int64)
            if src == 'buffer':
                bufs.append(np.empty(dims, dtype=dt))
            else:
                meta.append((int(np.prod(dims)) * dt.itemsize, dt.itemsize, kind, src != 'D'))
        addrs = np.array([b.ctypes.data for b in bufs], dtype=np.uintp).tobytes()
        got = mem[fn] = (bufs, tuple(meta), addrs)
    return got


cdef int _run(int fn, list arrays, tuple meta, bytes addrs, double *io, long B) except -1:
    cdef Py_buffer views[{maxa}]
    cdef void *ptrs[{maxa}]
    cdef Py_ssize_t i, n = len(arrays), got = 0, nb = len(addrs) // sizeof(void *)
    cdef int rc = 0
    cdef char c
    if n + nb > {maxa} or n != len(meta):
        raise ValueError("internal error: wrong number of arrays")
    if nb:
        memcpy(&ptrs[n], <const char *>addrs, nb * sizeof(void *))
    try:
        for i in range(n):
            want = meta[i]
            PyObject_GetBuffer(arrays[i], &views[i],
                               PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (PyBUF_WRITABLE if want[3] else 0))
            got += 1
            c = views[i].format[len(views[i].format) - 1] if views[i].format != NULL else 66
            if views[i].len != want[0] or views[i].itemsize != want[1] or \\
                    (c in b'fd') != (want[2] == 'f'):
                raise ValueError(f"array {{i}} of {{FUNCTIONS[fn]}}(): expected {{want[0]}} bytes of "
                                 f"{{'floats' if want[2] == 'f' else 'int64'}}, got {{arrays[i]!r:.80}}")
            ptrs[i] = views[i].buf
        with nogil:
            rc = sb_run(fn, ptrs, io, B)
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
    return rc
'''


def _c_block(text: str) -> list[str]:
    if '"""' in text or "\\" in text:
        raise AssertionError("generated C must not contain triple quotes or backslashes")
    body = ["    " + line if line else "" for line in text.splitlines()]
    return ["cdef extern from *:", '    """', *body, '    """']


def render(spec, fns, update: list[str], pnames: list[str], helpers: str, ctype: str) -> str:
    """The whole ``.pyx``: header, C block, constants and the Python-visible functions."""
    c = [BEGIN,
         "/* The kernels. codegen.cython.build compiles them apart, with the optimisation flags, and the",
         "   Cython glue around them at -O0 with SB_GLUE_ONLY defined (gcc time on Cython's",
         "   boilerplate buys nothing); compiled as one file, the module works the same. */",
         "#include <math.h>", "#include <stdint.h>", "#include <stdlib.h>",
         "#if defined(__GNUC__)", '#define SB_EXPORT __attribute__((visibility("hidden")))', "#else",
         "#define SB_EXPORT", "#endif",
         "#if defined(_MSC_VER) && !defined(restrict)", "#define restrict __restrict", "#endif",
         "SB_EXPORT int sb_run(int fn, void **a, double *io, long B);", "SB_EXPORT void sb_set_gemm(void *f);",
         "#ifndef SB_GLUE_ONLY", helpers.strip(), "",
         f"typedef void (*sb_gemm_t)(char *, char *, int *, int *, int *, {ctype} *, {ctype} *, int *, "
         f"{ctype} *, int *, {ctype} *, {ctype} *, int *);",
         "static sb_gemm_t sb_gemm;",
         "SB_EXPORT void sb_set_gemm(void *f) { sb_gemm = (sb_gemm_t)f; }", ""]
    for f in fns:
        c += f.c_source()
    c += update
    c += ["SB_EXPORT int sb_run(int fn, void **a, double *io, long B) {", "    switch (fn) {"]
    c += [f"    case {NAMES[f.name]}: return sb_{f.name}(a, io, B);" for f in fns]
    c += ["    case 3: return sb_update(a, io, B);", "    }", "    return -1;", "}", "#endif", END]

    # binding=False: plain builtin functions; cuts gcc time on the glue by ~45% (0.76 -> 0.42 s)
    lines = ["# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=False"]
    lines += spec.header("Cython")
    lines += [_PRELUDE.format(gemm="sgemm" if ctype == "float" else "dgemm")]
    lines += _c_block("\n".join(c))
    lines += ["    void sb_set_gemm(void *f)", "    int sb_run(int fn, void **a, double *io, long B) nogil", "",
              "sb_set_gemm(<void *>_gemm)", ""]
    lines += spec.constants()
    emitted = {f.name for f in fns}
    lines.append(f"FUNCTIONS = {tuple(k for k in NAMES if k != 'evaluate' or k in emitted)!r}")
    tables = {f.name: tuple((src, shape, "i" if dt == "int64" else "f") for src, _, shape, dt, _ in f.arrays)
              for f in fns}
    update_arrays = tuple(("P", spec.derivation.params[k].shape, "f") for k in pnames) * (2 + len(spec.optimizer.slots))
    arrays = tuple(tables.get(name, ()) for name in ("gradients", "loss", "predict")) + (update_arrays,)
    if "evaluate" in tables:  # an inference-mode loss of its own (else ``loss`` serves evaluate)
        arrays += (tables["evaluate"],)
    lines.append(f"_ARRAYS = {arrays!r}")
    if any(f.checks for f in fns):
        lines += LABEL_ERROR.splitlines()
    maxa = max(len(a) for a in arrays) + 1
    lines.append(_RUNTIME.format(maxa=maxa))
    for f in fns:
        lines += _function(f, spec)
    if spec.trains:
        lines += _step(spec, pnames)
    return "\n".join(lines) + "\n"


def _state_in(f, nleaves: int) -> list[str]:
    """Copy each stateful loop's carried state in (per carry whose shape still fits; its io flag
    says so), as the NumPy module's loop reads ``_ws.state`` at the start of a forward pass."""
    lines = []
    for loop in f.loops:
        if loop.state_in:
            lines.append(f"    st = _ws.state.get({loop.label!r})")
        for k, (a, slot) in enumerate(loop.state_in):
            buf = f"bufs[{a - nleaves}]"
            lines += [f"    io[{slot}] = 0",
                      f"    if st is not None and st[{k}].shape == {buf}.shape:",
                      f"        np.copyto({buf}, st[{k}])",
                      f"        io[{slot}] = 1"]
    return lines


def _state_out(f, nleaves: int) -> list[str]:
    """Replace (never mutate) ``_ws.state`` entries with the final carries; store the norms of dL/dh_t."""
    lines = []
    for loop in f.loops:
        if loop.state_in:
            carries = "".join(f"bufs[{a - nleaves}].copy(), " for a in loop.final)
            lines.append(f"    _ws.state[{loop.label!r}] = ({carries})")
        if loop.norms is not None:
            lines.append(f"    _ws.grad_norms[{loop.label!r}] = bufs[{loop.norms - nleaves}].copy()")
    return lines


_DOCS = {
    "gradients": "Forward and backward pass: returns (loss, {parameter: gradient}).",
    "loss": "Forward pass only: returns the loss.",
    "predict": "Forward pass to the named outputs: returns {output: array}.",
    "evaluate": "Forward pass in inference mode (no dropout): returns the loss.",
}


def _function(f, spec) -> list[str]:
    d = spec.derivation
    batched = [key for src, key, shape, _, _ in f.arrays if src == "D" and shape[:1] == (None,)]
    nleaves = len(f.sched.leaves)
    lines = ["", "", f"def {f.name}(P, D, _ws):", f'    """{_DOCS[f.name]}"""', f"    cdef double io[{f.io_slots}]"]
    lines.append(f"    cdef long B = len(D[{batched[0]!r}])" if batched else "    cdef long B = 1")
    lines.append(f"    bufs, meta, addrs = _prepare(_ws.buffers(B), {NAMES[f.name]}, B)")
    leaves = ", ".join(f"{src}[{key!r}]" for src, key, *_ in f.arrays[:nleaves])
    lines += _state_in(f, nleaves)
    if f.rng is not None:  # (seed, step count) of the random numbers drawn, as 32-bit halves
        k = f.rng
        lines += ["    _seed, _step = _ws.rng",
                  f"    io[{k}], io[{k + 1}], io[{k + 2}], io[{k + 3}] = "
                  "_seed & 0xffffffff, _seed >> 32, _step & 0xffffffff, _step >> 32"]
    lines.append(f"    _run({NAMES[f.name]}, [{leaves}], meta, addrs, io, B)")
    if f.check is not None:  # a one-hot met a label out of range: (which check, the label)
        lines += [f"    if bufs[{f.check - nleaves}][0]:",
                  f"        _c = {tuple(f.checks)!r}[bufs[{f.check - nleaves}][0] - 1]",
                  f"        _bad_label(_c[0], _c[1], bufs[{f.check - nleaves}][1], *_c[2:])"]
    lines += _state_out(f, nleaves)
    res = [f"bufs[{k - nleaves}]" for k in f.results]
    if f.name == "gradients":
        # the buffers' new values, for ``step``: the runtime puts the old ones back after any other call
        lines += [f"    _ws.running[{k!r}] = {r}" for k, r in zip(d.updates, res[1 + len(d.params):])]
        lines.append("    return io[0], {" + ", ".join(f"{k!r}: {r}" for k, r in zip(d.params, res[1:])) + "}")
    elif f.name in ("loss", "evaluate"):
        lines.append("    return io[0]")
    else:
        lines.append("    return {" + ", ".join(f"{k!r}: {r}" for k, r in zip(d.outputs, res)) + "}")
    return lines


def _step(spec, pnames: list[str]) -> list[str]:
    opt = spec.optimizer
    hyper = sorted(opt.hyper)
    arrays = [f"P[{k!r}]" for k in pnames] + [f"G[{k!r}]" for k in pnames]
    arrays += [f"S[{s!r}][{k!r}]" for s in opt.slots for k in pnames]
    lines = ["", "", "_UPDATE_META = _prepare({}, 3, 1)[1]", "", "",
             "def step(P, S, D, H, t, _ws):",
             '    """One training step: gradients, then the optimiser update in place. Returns the loss;',
             '    when the loss is not finite the parameters are left untouched."""',
             "    loss, G = gradients(P, D, _ws)",
             "    if isfinite(loss):",
             "        update(P, S, G, H, t, _ws)",
             "    return loss", "", "",
             # apart from step, so that a distributed trainer can reduce the gradients over its
             # processes in between (codegen/runtime/distributed.py)
             "def update(P, S, G, H, t, _ws):",
             '    """The optimiser update of the parameters P and the state S, in place, from the gradients G."""',
             f"    cdef double io[{len(hyper) + 1}]"]
    lines += [f"    io[{i}] = H[{k!r}]" for i, k in enumerate(hyper)]
    lines.append(f"    io[{len(hyper)}] = t")
    lines.append(f"    _run(3, [{', '.join(arrays)}], _UPDATE_META, b'', io, 1)")
    return lines


def kernels_of(source: str) -> str | None:
    """The C kernels embedded in a generated ``.pyx`` (between the emitter's markers)."""
    a, b = source.find(BEGIN), source.find(END)
    if a < 0 or b < a:
        return None
    return "\n".join(line[4:] if line.startswith("    ") else line for line in source[a:b].splitlines()) + "\n"


def _preload_blas() -> None:
    """Import ``scipy.linalg.cython_blas`` (whose gemm the modules call) from its file.

    A module that cimports it imports it at load time, and the usual way drags in all of
    ``scipy.linalg`` (~0.25 s, most of a warm start); the extension alone takes ~30 ms.
    """
    name = "scipy.linalg.cython_blas"
    if name in sys.modules:
        return
    try:
        scipy_dir = Path(importlib.util.find_spec("scipy").origin).parent
        path = scipy_dir / "linalg" / f"cython_blas{sysconfig.get_config_var('EXT_SUFFIX')}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - any surprise: the normal import path still works
        sys.modules.pop(name, None)


def load_extension(modname: str, path: Path) -> types.ModuleType:
    """Import the built extension ``modname`` from ``path``."""
    _preload_blas()
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
