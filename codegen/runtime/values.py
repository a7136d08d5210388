"""Named arrays and the checks on them: parameters and buffers by name, hyperparameters,
numbers read from weights files; the errors a trainer raises. Imports only NumPy (copied into
standalone packages with the rest of the runtime; ``trainer`` re-exports these names)."""

from __future__ import annotations

import math

import numpy as np


class DataError(ValueError):
    """Data passed to a trainer does not fit the model's declared inputs."""


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or Inf; the parameters were not updated."""


def _fmt(shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


class Params(dict):
    """Parameters (or buffers) by name. Assigning checks the shape and copies into the trainer's dtype."""

    def __init__(self, shapes: dict, dtype, values: dict, kind: str = "parameter"):
        super().__init__()
        self._shapes, self._dtype, self._kind = shapes, dtype, kind
        for k, v in values.items():
            self[k] = v

    def __setitem__(self, name, value):
        kind = self._kind
        if name not in self._shapes:
            raise KeyError(f"no {kind} {name!r}; the {kind}s are {', '.join(self._shapes) or 'none'}")
        a = np.asarray(value)
        if a.shape != tuple(self._shapes[name]):
            raise DataError(f"{kind} {name!r} has shape {_fmt(self._shapes[name])}, got an array of shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise DataError(f"{kind} {name!r}: expected numbers, got dtype {a.dtype}")
        super().__setitem__(name, np.array(a, dtype=self._dtype, order="C", copy=True))


DECAY_RATES = ("momentum", "rho", "beta1", "beta2")
"""Hyperparameters that must stay below 1 (as ``symbp.optim`` checks when one is created)."""


def check_hyper(hyper: dict, where: str) -> None:
    """Raise a DataError (starting with ``where``) unless every hyperparameter is a finite
    non-negative number, and each decay rate below 1: the step would fail or diverge on it."""
    for k, v in hyper.items():
        if type(v) is float and 0.0 <= v < 1.0:  # the common case, first: this runs every step
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not 0 <= v < math.inf or (k in DECAY_RATES and v >= 1):
            raise DataError(f"{where}: hyperparameter {k} is {v!r}; expected a finite non-negative number"
                            + (" below 1" if k in DECAY_RATES else ""))


def to_numbers(path, what: str, a, shape):
    """``a`` if it is a numeric array of ``shape`` (None stays None), else a DataError naming ``path``."""
    if a is None:
        return None
    if a.dtype.kind not in "fiu":
        raise DataError(f"{path}: {what} holds {a.dtype} values, not numbers")
    if shape is not None and a.shape != tuple(shape):
        raise DataError(f"{path}: {what} has shape {a.shape}; this model's is {tuple(shape)}")
    return a


def check_batch_stats(kernels, data: dict) -> None:
    """Raise a DataError naming the layer when a step's batch gives a layer that normalises over
    the batch (BatchNorm) a single value per feature: its variance would be 0 and the unbiased
    one (for the running variance) a division by zero. PyTorch refuses such batches too."""
    size = next((len(data[k]) for k, (shape, _) in kernels.INPUTS.items() if shape[:1] == (None,) and k in data), 2)
    for label, per_example in kernels.BATCH_STATS.items():
        if size * per_example < 2:
            raise DataError(f"step(): layer {label!r} normalises each feature over the batch and needs more than "
                            f"one value of it; a batch of {size} gives {size * per_example}. Train on batches of "
                            "2 or more (predict takes single examples)")
