"""The NumPy backend's files for a standalone package (``sb.build(..., backend="numpy")``):
the generated module, and its float64 twin for the self-test's finite differences."""

from __future__ import annotations

import dataclasses

from codegen.numpy import emitter
from codegen.spec import BackendFiles, Spec


def files(spec: Spec, name: str) -> BackendFiles:
    """``BackendFiles`` for a NumPy standalone package named ``name``."""
    f64 = dataclasses.replace(spec, dtype="float64")
    src = emitter.emit(spec)
    return BackendFiles({"_kernels.py": src, "_kernels64.py": src if spec.dtype == "float64" else emitter.emit(f64)})
