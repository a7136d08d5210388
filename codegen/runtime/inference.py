"""Prediction for a trainer: its own state for stateful recurrences, and outputs computed on demand.

Imports only NumPy (copied into standalone packages beside ``trainer.py``). ``predict`` runs the
generated ``predict`` function in the trainer's predict workspace, whose ``state`` is
``tr.predict_carries``: separate from training's carries, and advanced by every predict call,
so feeding a sequence a step at a time gives the outputs of feeding it whole (generation).
"""

from __future__ import annotations

import numpy as np

from .workspace import Workspace


class NoLoss(TypeError):
    """The model has outputs and no loss: it was compiled for inference (predict only)."""

    @classmethod
    def of(cls, model: str) -> NoLoss:
        """The error for calling loss, gradients, step, fit or evaluate on model ``model``."""
        return cls(f"model {model!r} has no loss: it was compiled for inference, so only predict() works, not "
                   "loss, gradients, step, fit or evaluate; to train it, call m.minimize(loss) before sb.derive(m)")


def predict(tr, batch: dict) -> dict:
    """``tr.predict(**batch)``: the named outputs on ``batch``, by name (copies).

    Args:
        tr: the Trainer.
        batch: input arrays by name, and optionally ``outputs`` (a list of output names) unless
            the model has an input of that name.
    Returns:
        {output name: array} for every output, or for those ``outputs`` names.
    """
    from .trainer import DataError

    if not tr.kernels.OUTPUTS:
        raise DataError("predict(): the model names no outputs; declare them with m.output(name, tensor)")
    names = None if "outputs" in tr.kernels.INPUTS else batch.pop("outputs", None)
    kernels, ws, names = _module(tr, names)
    data = tr._batch(batch, kernels.NEEDS["predict"], "predict")
    with tr._lock:
        state = tr.predict_carries
        size = next((len(a) for k, a in data.items() if tr.kernels.INPUTS[k][0][:1] == (None,)), 1)
        if any(c.shape[:1] != (size,) for carry in state.values() for c in carry):
            state.clear()  # a new batch size: every recurrence starts over from its initial state
        before = dict(state)  # the kernels replace entries, never mutate them
        try:
            out = kernels.predict(tr.params, data, ws)
        except BaseException:  # a failed call (a label out of range) leaves the state as it was
            state.clear()
            state.update(before)
            raise
        return {k: np.array(v) for k, v in out.items() if names is None or k in names}


def _module(tr, names) -> tuple:
    """(module, workspace, output names or None for all) that ``predict(outputs=names)`` runs.

    A strict subset of the outputs runs a module computing only them, built once per subset by
    ``tr.predictor`` (``sb.compile`` sets it); without one (a standalone package) the full
    predict runs and the result is filtered. Every module's workspace shares the predict state.
    """
    from .trainer import DataError

    known = tr.kernels.OUTPUTS
    if names is None:
        return tr.kernels, tr.predict_workspace, None
    if isinstance(names, str) or not all(isinstance(k, str) for k in names):
        raise DataError(f"predict(): outputs= takes a list of output names, got {names!r}")
    unknown = [k for k in names if k not in known]
    if unknown:
        raise DataError(f"predict(): unknown output(s) {', '.join(map(repr, unknown))}; "
                        f"the model's outputs are {', '.join(known)}")
    if not names:
        raise DataError(f"predict(): outputs= names no output; the model's outputs are {', '.join(known)}")
    key = tuple(k for k in known if k in names)  # in the model's order: one module per set
    if tr.predictor is None or len(key) == len(known):
        return tr.kernels, tr.predict_workspace, key
    with tr._lock:
        if key not in tr._predictors:
            module = tr.predictor(key)
            module.DataError = DataError  # what the module's own label checks raise
            ws = Workspace(tr.predict_carries, {})
            ws.running = tr.buffers  # the running statistics, read in inference mode
            tr._predictors[key] = (module, ws)
        module, ws = tr._predictors[key]
    return module, ws, key
