"""Golden file for the Cython backend's generated code: a change to what it emits shows up
as a diff to review. Regenerate with ``SYMBP_UPDATE_GOLDEN=1 pytest tests/test_cython_golden.py``."""

from __future__ import annotations

import os
from pathlib import Path

import symbp as sb

GOLDEN = Path(__file__).parent / "golden" / "cython_tiny_mlp.pyx"


def tiny_source() -> str:
    import codegen

    m = sb.Model("tiny")
    x = m.input("x", (4,))
    y = m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (4, 32)) + m.param("b1", (32,), init="zeros"))
    m.minimize(sb.softmax_cross_entropy(h @ m.param("W2", (32, 3)), y))
    return codegen.emit(codegen.Spec(sb.derive(m), sb.optim.Momentum(clip_norm=1.0), "float32"), "cython")


def test_generated_pyx_matches_golden_file():
    source = tiny_source()
    if os.environ.get("SYMBP_UPDATE_GOLDEN"):
        GOLDEN.write_text(source)
    assert GOLDEN.exists(), f"missing {GOLDEN}; create it with SYMBP_UPDATE_GOLDEN=1"
    assert source == GOLDEN.read_text(), f"generated code changed; review, then update {GOLDEN.name}"
