"""Shared test helpers: build a model around one registered op, so every op is checked; load
an example script; the README's quick-start model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import symbp as sb
from symbp.ops.structural import node as structural_node
from symbp.registry import OPS

BATCH = 3
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

README_MLP = """\
m = sb.Model("mlp")
x = m.input("x", (64,))
y = m.input("y", (), dtype="int64")
W1 = m.param("W1", (64, 256), init="glorot_uniform")
b1 = m.param("b1", (256,), init="zeros")
h = sb.tanh(x @ W1 + b1)
logits = h @ m.param("W2", (256, 10)) + m.param("b2", (10,), init="zeros")
m.minimize(sb.softmax_cross_entropy(logits, y))
"""
"""The README quick-start model as source (``sb`` imported, the model bound to ``m``): tests
that need a new process run it as text."""


def readme_mlp() -> sb.Model:
    """The README quick-start model."""
    scope = {"sb": sb}
    exec(README_MLP, scope)  # noqa: S102 - our own fixed source
    return scope["m"]


def load_file(path: Path, name: str):
    """Import the Python file at ``path`` as a fresh module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example(name: str, module_name: str | None = None):
    """A fresh import of ``examples/<name>.py``."""
    return load_file(EXAMPLES / f"{name}.py", module_name or name)


def op_names(kind: str | None = None) -> list[str]:
    return sorted(k for k, v in OPS.items() if v.kind != "leaf" and k != "ew" and (kind is None or v.kind == kind)
                  and "tested_by" not in v.sample)  # e.g. scan: needs a traced cell, see its test


def _values(rng, shape, sample):
    lo, hi = sample.get("low"), sample.get("high")
    v = rng.uniform(lo, hi, shape) if lo is not None else rng.normal(0, 1, shape)
    if sample.get("avoid_zero"):
        v = np.where(np.abs(v) < 0.2, np.sign(v + 1e-12) * 0.2 + v, v)
    return v


def op_model(name: str, rng):
    """A model applying op ``name`` to parameters (batched through an input where the op's
    sample shape has a batch axis), with loss sum(out * c) for a random input c.

    Returns (model, batch dict, params dict of initial values).
    """
    od = OPS[name]
    sample = od.sample
    attrs = dict(sample.get("attrs", {}))
    m = sb.Model(f"op_{name}")
    batch, params, args = {}, {}, []
    if od.kind == "elementwise":
        shapes = [(None, 4)] * (sample["arity"] - len(attrs))
        dtypes = ["float"] * len(shapes)
    else:
        shapes, dtypes = sample["shapes"], sample.get("dtypes", ["float"] * len(sample["shapes"]))
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        if dtype == "int64":
            x = m.input(f"i{i}", shape[1:], dtype="int64")
            batch[f"i{i}"] = rng.integers(0, sample.get("int_high", attrs.get("depth", 2)), (BATCH, *shape[1:]))
            args.append(x)
            continue
        if shape[:1] == (None,):
            x = m.input(f"x{i}", shape[1:])
            p = m.param(f"p{i}", shape[1:])
            batch[f"x{i}"] = _values(rng, (BATCH, *shape[1:]), sample) if i in sample.get("nondiff", ()) \
                else np.ones((BATCH, *shape[1:])) + rng.uniform(-0.05, 0.05, (BATCH, *shape[1:]))
            params[f"p{i}"] = _values(rng, shape[1:], sample)
            args.append(x * p)
        else:
            p = m.param(f"p{i}", shape)
            params[f"p{i}"] = _values(rng, shape, sample)
            args.append(p)
    if od.kind == "elementwise":
        from symbp.ops.elementwise import apply

        out = apply(name, *args, **attrs)
    else:
        out = structural_node(name, args, **attrs)
    if out.dtype == "int64":  # an int result (argmax) reaches the loss through a one-hot
        out = sb.one_hot(out, sample["int_result"])
    if None in out.shape[1:]:
        k = out.shape.index(None)
        out = sb.transpose(out, (k, *[i for i in range(out.ndim) if i != k]))
    per_example = out.shape[1:] if out.shape[:1] == (None,) else out.shape
    c = m.input("c", per_example)
    batch["c"] = rng.normal(0, 1, (BATCH, *per_example))
    m.minimize(sb.sum(out * c))
    return m, batch, params
