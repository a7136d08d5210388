"""Run-time wrapper around a generated training module. Imports only NumPy.

The same file serves models compiled in-process (``sb.compile``) and standalone packages
(``sb.build`` copies it beside the generated code), so both check data the same way:
missing or extra inputs, wrong shapes or dtypes and out-of-range labels are reported in the
model's terms before any generated code runs.
"""

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
    """Parameters by name. Assigning checks the shape and copies into the trainer's dtype."""

    def __init__(self, shapes: dict, dtype, values: dict):
        super().__init__()
        self._shapes, self._dtype = shapes, dtype
        for k, v in values.items():
            self[k] = v

    def __setitem__(self, name, value):
        if name not in self._shapes:
            raise KeyError(f"no parameter {name!r}; the parameters are {', '.join(self._shapes)}")
        a = np.asarray(value)
        if a.shape != tuple(self._shapes[name]):
            raise DataError(f"parameter {name!r} has shape {_fmt(self._shapes[name])}, got an array of shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise DataError(f"parameter {name!r}: expected numbers, got dtype {a.dtype}")
        super().__setitem__(name, np.array(a, dtype=self._dtype, order="C", copy=True))


class Trainer:
    """A compiled model: parameters, optimiser state, and loss/gradients/step/predict.

    Args:
        kernels: the generated module.
        params: initial parameter values by name.
        hyper: optimiser hyperparameters (a live dict: changing a value takes effect at once).
        source: the generated source text, shown by ``tr.source``.
    """

    def __init__(self, kernels, params: dict, hyper: dict | None = None, source: str | None = None):
        self.kernels = kernels
        self.dtype = np.dtype(kernels.DTYPE)
        self.params = Params(kernels.PARAMS, self.dtype, params)
        self.hyper = dict(kernels.HYPER) if hyper is None else hyper
        self.source = source
        self.t = 0
        self.reset_optimizer()

    def reset_optimizer(self) -> None:
        """Zero the optimiser state and the step count."""
        self.state = {s: {k: np.zeros(shape, self.dtype) for k, shape in self.kernels.PARAMS.items()}
                      for s in self.kernels.SLOTS}
        self.t = 0

    # -- data checks ----------------------------------------------------------------------
    def _batch(self, batch: dict, names, what: str) -> dict:
        declared = self.kernels.INPUTS
        extra = sorted(set(batch) - set(declared))
        if extra:
            raise DataError(f"{what}(): unexpected input(s) {', '.join(map(repr, extra))}; "
                            f"the model's inputs are {', '.join(declared)}")
        out, size, first = {}, None, None
        for name in names:
            shape, kind = declared[name]
            if name not in batch:
                raise DataError(f"{what}(): missing input {name!r} ({kind} of shape {_fmt(shape)})")
            a = np.asarray(batch[name])
            if a.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, a.shape)):
                raise DataError(f"{what}(): input {name!r} must have shape {_fmt(shape)}, got {a.shape}")
            if kind == "int64":
                if not np.issubdtype(a.dtype, np.integer):
                    raise DataError(f"{what}(): input {name!r} holds class labels and must be integers, got {a.dtype}")
                a = np.ascontiguousarray(a, dtype=np.int64)
                classes = self.kernels.CLASSES.get(name)
                if classes is not None and a.size and (a.min() < 0 or a.max() >= classes):
                    raise DataError(f"{what}(): input {name!r} has labels outside 0..{classes - 1} "
                                    f"(min {a.min()}, max {a.max()})")
            else:
                if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
                        or a.dtype == np.bool_):
                    raise DataError(f"{what}(): input {name!r} must be numeric, got dtype {a.dtype}")
                a = np.ascontiguousarray(a, dtype=self.dtype)
            if shape[:1] == (None,):
                if size is None:
                    size, first = a.shape[0], name
                elif a.shape[0] != size:
                    raise DataError(f"{what}(): inputs {first!r} and {name!r} have different batch sizes "
                                    f"({size} and {a.shape[0]})")
            out[name] = a
        if size == 0:
            raise DataError(f"{what}(): the batch is empty")
        return out

    def _needs(self, fn: str):
        return self.kernels.NEEDS[fn]

    # -- the API --------------------------------------------------------------------------
    def loss(self, **batch) -> float:
        """The loss on ``batch`` (keyword arrays by input name)."""
        return self.kernels.loss(self.params, self._batch(batch, self._needs("loss"), "loss"))

    def gradients(self, **batch) -> dict:
        """d loss / d parameter on ``batch``, by parameter name (copies); no update."""
        _, grads = self.kernels.gradients(self.params, self._batch(batch, self._needs("gradients"), "gradients"))
        return {k: np.array(v) for k, v in grads.items()}

    def step(self, **batch) -> float:
        """One optimiser update on ``batch``; returns the loss before the update.

        Raises:
            NonFiniteLoss: the loss is NaN or Inf (the parameters are left unchanged).
        """
        data = self._batch(batch, self._needs("gradients"), "step")
        self.t += 1
        loss = self.kernels.step(self.params, self.state, data, self.hyper, self.t)
        if not math.isfinite(loss):
            self.t -= 1
            raise NonFiniteLoss(f"step {self.t + 1}: the loss is {loss}; the parameters were left as they were. "
                                "Lower the learning rate, clip gradients (clip_norm=...), or check the "
                                "inputs for NaN/Inf.")
        return loss

    def predict(self, **batch) -> dict:
        """The model's named outputs (``m.output``) on ``batch``, by name (copies)."""
        if not self.kernels.OUTPUTS:
            raise DataError("predict(): the model names no outputs; declare them with m.output(name, tensor)")
        out = self.kernels.predict(self.params, self._batch(batch, self._needs("predict"), "predict"))
        return {k: np.array(v) for k, v in out.items()}

    # -- recurrences ------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the carries of stateful recurrences: the next pass starts from their init."""
        getattr(self.kernels, "STATE", {}).clear()

    def gradient_norms_through_time(self, **batch) -> dict:
        """The norm of dL/dh_t (over the batch) for every step t of each recurrence; no update.

        Returns:
            {loop label: array of shape (T,)}; vanishing gradients show as a decay towards t = 0.
        """
        self.kernels.gradients(self.params, self._batch(batch, self._needs("gradients"), "gradient_norms_through_time"))
        norms = getattr(self.kernels, "GRAD_NORMS", None)
        if not norms:
            raise DataError("gradient_norms_through_time(): the model has no recurrence (sb.scan)")
        return {k: np.array(v) for k, v in norms.items()}

    def __repr__(self) -> str:
        return f"<Trainer {self.kernels.MODEL!r} dtype={self.dtype} params={list(self.params)} t={self.t}>"
