"""Backends: turn a derivation into training code, and load it.

``emit(spec, backend)`` returns source text; ``load(source, backend, name)`` returns the
module. Each backend keeps its own table of how to emit each op.
"""

from __future__ import annotations

import linecache
import types

from codegen.spec import FLOAT_DTYPES, Spec, source_hash

BACKENDS = ("numpy", "cython")


def emit(spec: Spec, backend: str = "numpy") -> str:
    """Generated source for ``spec`` on ``backend``."""
    if backend == "numpy":
        from codegen import numpy_backend

        return numpy_backend.emit(spec)
    if backend == "cython":
        from codegen import cython_backend

        return cython_backend.emit(spec)
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
        from codegen import build

        return build.build(source, name)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def emit_and_load(spec: Spec, backend: str = "numpy") -> tuple[str, types.ModuleType]:
    """Source and module for ``spec``; a compiled backend may skip emitting on a cache hit."""
    if backend == "cython":
        from codegen import build, cython_backend

        key = cython_backend.graph_key(spec)
        hit = build.lookup(key)
        if hit is not None:
            return hit[1], hit[0]
        source = emit(spec, backend)
        module = load(source, backend, spec.derivation.name)
        build.remember(key, module)
        return source, module
    source = emit(spec, backend)
    return source, load(source, backend, spec.derivation.name)


__all__ = ["BACKENDS", "FLOAT_DTYPES", "Spec", "emit", "emit_and_load", "load"]
