"""Backends: turn a derivation into training code, and load it.

``emit(spec, backend)`` returns source text; ``load(source, backend, name)`` returns the
module. Each backend is a subpackage with its own table of how to emit each op:

- ``spec``: what every backend is given (the optimised derivation, optimiser, dtype);
- ``naming``: buffer and parameter names taken from the model and its equations;
- ``numpy/``, ``cython/``: the backends (``emitter.emit``, ``package.files``);
- ``runtime/``: the Trainer and training loop around a generated module (NumPy only);
- ``standalone/``: the writer of pip-installable training packages.

Stage: the last one. May import all of ``symbp``'s core (``symbp.ir``, ``registry``,
``notation``, ``ops``, ``autodiff``, ``optim``, ``show``); the core never imports ``codegen``
(only ``symbp/__init__.py`` and ``symbp/cli.py`` do, inside functions).

To add a backend: a subpackage ``codegen/<name>/`` with ``emitter.emit(spec)`` (and a
table for every registered op: tests/test_ops.py checks it), a branch in ``emit``/``load``
below, its name in ``BACKENDS``, and ``package.files`` for standalone packages.
"""

from __future__ import annotations

import linecache
import types

from codegen.spec import FLOAT_DTYPES, Spec, source_hash

BACKENDS = ("numpy", "cython")


def emit(spec: Spec, backend: str = "numpy") -> str:
    """Generated source for ``spec`` on ``backend``."""
    if backend == "numpy":
        from codegen.numpy import emitter

        return emitter.emit(spec)
    if backend == "cython":
        from codegen.cython import emitter

        return emitter.emit(spec)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def load(source: str, backend: str, name: str) -> types.ModuleType:
    """Import generated ``source`` as a module."""
    if backend == "numpy":
        filename = f"<symbp {name} {source_hash(source)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module = types.ModuleType(f"symbp_generated_{name}")
        module.__file__ = filename
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own generated code
        return module
    if backend == "cython":
        from codegen.cython import build

        return build.build(source, name)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def emit_and_load(spec: Spec, backend: str = "numpy") -> tuple[str, types.ModuleType]:
    """Source and module for ``spec``; a compiled backend may skip deriving and emitting on a cache hit
    (keyed on the forward graph: ``codegen.cython.cache.graph_key``)."""
    if backend == "cython":
        from codegen.cython import build, cache

        key = cache.graph_key(spec)
        hit = build.lookup(key)
        if hit is not None:
            return hit[1], hit[0]
        build.prestart()  # Cython warms up in a process of its own while we derive and emit
        try:
            source = emit(spec, backend)
            module = load(source, backend, spec.derivation.name)
        finally:
            build.discard_warm()  # unless the build took it
        build.remember(key, module)
        return source, module
    source = emit(spec, backend)
    return source, load(source, backend, spec.derivation.name)


__all__ = ["BACKENDS", "FLOAT_DTYPES", "Spec", "emit", "emit_and_load", "load"]
