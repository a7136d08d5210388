"""Parameter initialisers, seeded.

Fan-in and fan-out follow the (inputs, outputs) layout of weights used throughout symbp:
a dense weight is (in, out); for more axes (e.g. a convolution kernel (kh, kw, in, out))
the leading axes multiply into both fans as the receptive field.
"""

from __future__ import annotations

import math

import numpy as np

from symbp.ir import SymbpError


def _fans(shape: tuple) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    field = math.prod(shape[:-2])
    return shape[-2] * field, shape[-1] * field


def _zeros(rng, shape): return np.zeros(shape)
def _ones(rng, shape): return np.ones(shape)
def _constant(rng, shape, value=0.0): return np.full(shape, float(value))
def _normal(rng, shape, std=0.05, mean=0.0): return rng.normal(mean, std, shape)
def _uniform(rng, shape, limit=0.05): return rng.uniform(-limit, limit, shape)


def _glorot_uniform(rng, shape):
    fi, fo = _fans(shape)
    return rng.uniform(-1, 1, shape) * math.sqrt(6.0 / (fi + fo))


def _glorot_normal(rng, shape):
    fi, fo = _fans(shape)
    return rng.normal(0, math.sqrt(2.0 / (fi + fo)), shape)


def _he_uniform(rng, shape):
    return rng.uniform(-1, 1, shape) * math.sqrt(6.0 / _fans(shape)[0])


def _he_normal(rng, shape):
    return rng.normal(0, math.sqrt(2.0 / _fans(shape)[0]), shape)


def _lecun_uniform(rng, shape):
    return rng.uniform(-1, 1, shape) * math.sqrt(3.0 / _fans(shape)[0])


def _orthogonal(rng, shape, gain=1.0):
    if len(shape) < 2:
        raise SymbpError("the orthogonal initialiser needs at least 2 axes")
    rows, cols = math.prod(shape[:-1]), shape[-1]
    a = rng.normal(0, 1, (max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    q = q if rows >= cols else q.T
    return gain * q[:rows, :cols].reshape(shape)


INITIALISERS = {
    "zeros": _zeros, "ones": _ones, "constant": _constant, "normal": _normal, "uniform": _uniform,
    "glorot_uniform": _glorot_uniform, "glorot_normal": _glorot_normal,
    "xavier_uniform": _glorot_uniform, "xavier_normal": _glorot_normal,
    "he_uniform": _he_uniform, "he_normal": _he_normal, "lecun_uniform": _lecun_uniform,
    "orthogonal": _orthogonal,
}


def spec(init, args: dict, what: str) -> tuple:
    """Validate an initialiser choice; return a hashable ``(name, ((key, value), ...))``."""
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return ("constant", (("value", float(init)),))
    if init not in INITIALISERS:
        raise SymbpError(f"{what}: unknown initialiser {init!r}; choose from {', '.join(sorted(INITIALISERS))}")
    fn = INITIALISERS[init]
    allowed = fn.__code__.co_varnames[2:fn.__code__.co_argcount]
    extra = set(args) - set(allowed)
    if extra:
        raise SymbpError(f"{what}: initialiser {init!r} takes {', '.join(allowed) or 'no options'}, "
                         f"not {', '.join(sorted(extra))}")
    return (init, tuple(sorted((k, float(v)) for k, v in args.items())))


def initial_values(params: dict, seed: int) -> dict:
    """Initial float64 values of ``params`` (name -> param node), in definition order."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in params.items():
        kind, args = p.attrs["init"]
        out[name] = np.asarray(INITIALISERS[kind](rng, p.shape, **dict(args)), dtype=np.float64).reshape(p.shape)
    return out
