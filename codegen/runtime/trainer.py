"""Run-time wrapper around a generated training module. Imports only NumPy.

The same file serves models compiled in-process (``sb.compile``) and standalone packages
(``sb.build`` copies it, and ``training.py`` beside it, next to the generated code), so both
check data the same way: missing or extra inputs, wrong shapes or dtypes and out-of-range
labels are reported in the model's terms before any generated code runs.

Weights files (``save``/``load``, checkpoints) are plain ``.npz``: parameters under their own
names (``np.load(f)["W1"]``), optimiser slots under ``state.<slot>.<param>`` (a dot cannot
occur in a parameter name), the carries of stateful recurrences under ``carry.<loop>.<k>``,
buffers (running statistics, which are weights too) under ``buffer.<name>``, and a JSON
string under ``_meta`` (step count, hyperparameters, and for checkpoints the training loop's
position). They are written atomically: a reader
sees the previous file or the new one, never half of one (``weights.write_npz``). Loading
checks the whole file before it changes anything (``weights.read_npz`` and the readers beside it).
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np

from . import distributed as _distributed
from .inference import NoLoss
from .values import (  # noqa: F401 - re-exported
    DataError,
    NonFiniteLoss,
    Params,
    _fmt,
    check_batch_stats,
    check_hyper,
    to_numbers,
)
from .workspace import Workspace

FORMAT = 1


class Trainer:
    """A compiled model: parameters, optimiser state, and loss/gradients/step/predict.

    Args:
        kernels: the generated module.
        params: initial parameter values by name.
        hyper: optimiser hyperparameters (a live dict: changing a value takes effect at once).
        source: the generated source text, shown by ``tr.source``.
        seed: keys the random numbers of the step (dropout): step t draws the numbers of
            (seed, t), so they come again from a checkpoint (which stores both).
        distributed: None, or "mpi": train on every process of ``mpiexec`` together (see
            ``distributed.py``); the parameters start as rank 0's.
    """

    def __init__(self, kernels, params: dict, hyper: dict | None = None, source: str | None = None, seed: int = 0,
                 distributed: str | None = None):
        self.kernels = kernels
        kernels.DataError = DataError  # what the kernels' own checks (labels) raise: ours, not a bare ValueError
        self.dtype = np.dtype(kernels.DTYPE)
        self.params = Params(kernels.PARAMS, self.dtype, params)
        self.hyper = dict(kernels.HYPER) if hyper is None else hyper
        self.source = source
        self.seed = int(seed)
        self.t = 0
        self.carries: dict = {}  # stateful recurrences' final carries, by loop label
        self.grad_norms: dict = {}  # filled by gradient passes: ||dL/dh_t|| per loop
        self.workspace = Workspace(self.carries, self.grad_norms)
        # Non-trainable state (running statistics), by name; assignable like params. Only step
        # changes it: the kernels replace entries, and the runtime puts them back after other calls.
        buffers = getattr(kernels, "BUFFERS", {})
        self.buffers = Params({k: shape for k, (shape, _) in buffers.items()}, self.dtype,
                              {k: np.full(shape, fill) for k, (shape, fill) in buffers.items()}, "buffer")
        self.workspace.running = self.buffers
        self.predict_carries: dict = {}  # predict's own state (see .inference), apart from training's
        self.predict_workspace = Workspace(self.predict_carries, {})
        self.predictor, self._predictors = None, {}  # modules for predict(outputs=...), see .inference
        self.predict_workspace.running = self.buffers  # predict reads the running statistics
        # One call at a time: calls from two threads share this trainer's buffers, state and
        # step count, so they take turns (separate trainers run in parallel).
        self._lock = threading.RLock()
        self.reset_optimizer()
        self.dist = _distributed.group(distributed)  # None, or the MPI processes training together
        if self.dist is not None:
            self.dist.join(self)

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
                # dtype.kind rather than np.issubdtype, and one reduction for the label range
                # (negative labels wrap past any class count as uint64): this runs every step,
                # and the two reductions and subdtype checks cost ~10 us, 1.5% of an MLP step
                if a.dtype.kind not in "iu":
                    raise DataError(f"{what}(): input {name!r} holds class labels and must be integers, got {a.dtype}")
                a = np.ascontiguousarray(a, dtype=np.int64)
                classes = self.kernels.CLASSES.get(name)
                if classes is not None and a.size and a.view(np.uint64).max() >= classes:
                    raise DataError(f"{what}(): input {name!r} has labels outside 0..{classes - 1} "
                                    f"(min {a.min()}, max {a.max()})")
            else:
                if a.dtype.kind not in "fiub":
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
        if fn not in self.kernels.NEEDS:
            raise NoLoss.of(self.kernels.MODEL)
        return self.kernels.NEEDS[fn]

    # -- the API --------------------------------------------------------------------------
    def _run(self, fn: str, data: dict):
        """Generated function ``fn`` on checked data, leaving the carried state of stateful
        recurrences as it was: only ``step`` advances it. Arrays in the result are copies, taken
        before another thread's call can overwrite the buffers they were computed in."""
        with self._lock:
            before = dict(self.carries)  # the kernels replace entries, never mutate them
            buffers = dict(self.buffers)
            self.workspace.rng = (self.seed, self.t + 1)  # the next step's numbers, not advancing: gradcheck works
            try:
                # a module has an evaluate (the loss in inference mode) only where it is not its loss
                kernel = getattr(self.kernels, fn, None) or self.kernels.loss
                out = kernel(self.params, data, self.workspace)
                if fn == "gradients":
                    return out[0], {k: np.array(v) for k, v in out[1].items()}
                return {k: np.array(v) for k, v in out.items()} if fn == "predict" else out
            finally:
                self._set_carries(before)
                dict.update(self.buffers, buffers)  # the same arrays: no copy, no check

    def _set_carries(self, carries: dict) -> None:
        self.carries.clear()
        self.carries.update(carries)

    # ``self`` is positional-only (``/``) in the methods taking inputs as keywords: a model may
    # have an input called "self".
    def loss(self, /, **batch) -> float:
        """The loss on ``batch`` (keyword arrays by input name)."""
        return self._run("loss", self._batch(batch, self._needs("loss"), "loss"))

    def gradients(self, /, **batch) -> dict:
        """d loss / d parameter on ``batch``, by parameter name (copies); no update."""
        return self._run("gradients", self._batch(batch, self._needs("gradients"), "gradients"))[1]

    def step(self, /, **batch) -> float:
        """One optimiser update on ``batch``; returns the loss before the update. (Distributed: each
        rank's own examples; the update and the loss returned are those of all ranks' examples.)

        Raises:
            NonFiniteLoss: the loss is NaN or Inf (the parameters are left unchanged).
        """
        return self._step(self._batch(batch, self._needs("gradients"), "step"))

    def _step(self, data: dict) -> float:
        """``step`` on data already checked by ``_batch`` (the training loop checks once)."""
        if getattr(self.kernels, "BATCH_STATS", None):
            check_batch_stats(self.kernels, data)
        with self._lock:  # the check too: another thread may set tr.hyper between it and the step
            check_hyper(self.hyper, "step()")  # a live dict: tr.hyper["lr"] = "fast" would fail in generated code
            self.t += 1
            self.workspace.rng = (self.seed, self.t)  # step t draws the numbers of (seed, t)
            before, buffers = dict(self.carries), dict(self.buffers)
            try:
                loss = self.kernels.step(self.params, self.state, data, self.hyper, self.t, self.workspace) \
                    if self.dist is None else self.dist.step(self, data)  # gradients, summed over ranks, update
            except DataError:  # found by the kernels' own checks (labels), before any update
                self.t -= 1
                self._set_carries(before)
                dict.update(self.buffers, buffers)
                raise
            if not math.isfinite(loss):
                self.t -= 1
                self._set_carries(before)
                dict.update(self.buffers, buffers)
                raise NonFiniteLoss(f"step {self.t + 1}: the loss is {loss}; the parameters were left as they "
                                    "were. Lower the learning rate, clip gradients (clip_norm=...), or check the "
                                    "inputs for NaN/Inf.")
        return loss

    def predict(self, /, **batch) -> dict:
        """The named outputs (``m.output``) on ``batch``, by name (copies); ``outputs=[names]``
        computes those only. Stateful recurrences continue from predict's own state (see
        ``inference.predict``)."""
        from .inference import predict

        return predict(self, batch)

    def evaluate(self, data: dict, batch_size: int = 256) -> dict:
        """Mean loss over ``data`` (and accuracy, see ``training.accuracy_pair``), in batches.

        Returns:
            ``{"loss": float}`` plus ``"accuracy"`` where the model has a class output.
        """
        from .training import evaluate

        return evaluate(self, data, batch_size)

    def fit(self, data: dict, epochs: int = 1, batch_size: int = 32, **options) -> dict:
        """Train on ``data`` (arrays by input name) in shuffled minibatches; see ``training.fit``.

        Returns:
            The history: per-epoch lists ``loss`` (and ``accuracy``, ``val_loss``, ...).
        """
        from .training import fit

        return fit(self, data, epochs, batch_size, **options)

    # -- weights files --------------------------------------------------------------------
    def save(self, path, extra: dict | None = None, meta: dict | None = None) -> None:
        """Write weights, buffers, optimiser state, step count, hyperparameters and the carried state
        of stateful recurrences (``carry.<loop>.<k>``) to ``path`` (.npz).

        Args:
            path: the file; replaced atomically (temporary file in the same folder, then rename).
            extra: more arrays to store (the training loop's own, under ``_``-prefixed keys).
            meta: more JSON-able metadata (merged into ``_meta``).
        """
        arrays = {k: v for k, v in self.params.items()}
        for slot, table in self.state.items():
            arrays.update({f"state.{slot}.{k}": v for k, v in table.items()})
        carries = self.carries
        for loop, values in carries.items():
            arrays.update({f"carry.{loop}.{k}": v for k, v in enumerate(values)})
        arrays.update({f"buffer.{k}": v for k, v in self.buffers.items()})
        info = {"format": FORMAT, "model": self.kernels.MODEL, "dtype": str(self.dtype), "t": self.t, "seed": self.seed,
                "hyper": self.hyper, "slots": list(self.kernels.SLOTS), "optimizer": self._optimizer_name(),
                "carries": {loop: len(v) for loop, v in carries.items()}, "buffers": list(self.buffers),
                **(meta or {})}
        arrays["_meta"] = np.array(json.dumps(info, sort_keys=True))
        arrays.update(extra or {})
        from .weights import write_npz

        write_npz(path, arrays)

    def load(self, path, weights_only: bool = False) -> dict:
        """Restore parameters (and optimiser state, step count, hyperparameters and carried state
        where the file has them) from ``path``, as written by ``save`` or a checkpoint.

        Nothing changes unless the whole file fits this trainer: its model, parameter shapes and
        optimiser (state slots and hyperparameters), so an SGD checkpoint never carries on in an
        Adam trainer with zero moments, nor the reverse.

        Args:
            path: the ``.npz`` file.
            weights_only: take the parameters alone and keep this trainer's optimiser state,
                step count and hyperparameters (to go on with another optimiser). Always so
                for a model without a loss: it has no training to resume.
        Returns:
            The file's metadata (empty for a bare weights file) and its ``_``-prefixed arrays.
        Raises:
            DataError: the file is damaged or does not fit this trainer (the message names it).
        """
        from .weights import read_buffers, read_carries, read_npz, read_optimiser

        arrays, meta = read_npz(path)
        if meta.get("model", self.kernels.MODEL) != self.kernels.MODEL:
            raise DataError(f"{path}: written for model {meta['model']!r}, not {self.kernels.MODEL!r}")
        params = {k: to_numbers(path, f"parameter {k!r}", arrays.get(k), shape)
                  for k, shape in self.kernels.PARAMS.items()}
        extra = [k for k in arrays if "." not in k and not k.startswith("_") and k not in params]
        missing = [k for k, v in params.items() if v is None]
        if missing or extra:
            raise DataError(f"{path}: " + "; ".join(
                ([f"missing parameter(s) {', '.join(map(repr, missing))}"] if missing else [])
                + ([f"unknown parameter(s) {', '.join(map(repr, extra))}"] if extra else [])))
        state = carries = None
        buffers = read_buffers(self, path, arrays, meta)  # running statistics belong to the weights
        weights_only = weights_only or "loss" not in self.kernels.NEEDS  # inference: no optimiser, no step
        if not weights_only:
            state = read_optimiser(self, path, arrays, meta)
            carries = read_carries(path, arrays, meta)
        for k, v in params.items():
            self.params[k] = v
        for k, v in (buffers or {}).items():
            self.buffers[k] = v
        self.predict_carries.clear()  # computed with other weights
        if state is not None:
            for slot, table in state.items():
                self.state[slot].update({k: np.array(v, dtype=self.dtype, order="C") for k, v in table.items()})
            self.t = meta.get("t", self.t)
            self.seed = meta.get("seed", self.seed)
            self.hyper.update(meta.get("hyper", {}))
        if carries is not None:  # written by save: restore exactly (none saved: start from init)
            self._set_carries({loop: tuple(np.array(a, dtype=self.dtype, order="C") for a in values)
                               for loop, values in carries.items()})
        meta["arrays"] = {k: v for k, v in arrays.items() if k.startswith("_")}
        return meta

    def _optimizer_name(self) -> str | None:
        opt = getattr(self, "optimizer", None)  # set by sb.compile; a package's trainer has none
        return None if opt is None else type(opt).__name__

    # -- recurrences ------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the carries of stateful recurrences, training's and predict's: the next pass
        of either starts from their initial state."""
        self.carries.clear()
        self.predict_carries.clear()

    def gradient_norms_through_time(self, /, **batch) -> dict:
        """The norm of dL/dh_t (over the batch) for every step t of each recurrence; no update.

        Returns:
            {loop label: array of shape (T,)}; vanishing gradients show as a decay towards t = 0.
        """
        data = self._batch(batch, self._needs("gradients"), "gradient_norms_through_time")
        with self._lock:  # the norms are this call's until it has copied them
            self.grad_norms.clear()
            self._run("gradients", data)
            norms = {k: np.array(v) for k, v in self.grad_norms.items()}
        if not norms:
            raise DataError("gradient_norms_through_time(): the model has no recurrence (sb.scan)")
        return norms

    def finite_difference_errors(self, batch: dict, eps: float = 1e-5, entries: int = 64,
                                 rng=None) -> dict:
        """Worst relative error per parameter between ``gradients`` and central differences of
        ``loss`` (meaningful in float64). No update; parameters are restored exactly.

        An entry's error is relative to the larger of the two values, floored at 1% of the
        parameter's largest gradient entry, so a near-zero entry is not judged by the finite
        difference's rounding noise (~1e-16 * loss / eps); and a difference within that noise
        counts as none, so a gradient that is zero by design (a bias before a BatchNorm) passes.

        Args:
            batch: input arrays by name.
            eps: the finite-difference step.
            entries: entries checked per parameter (chosen at random; all if fewer).
            rng: a numpy Generator choosing the entries (default: seeded with 0).
        Returns:
            {parameter name: worst relative error}; ``inf`` where a gradient, a finite difference
            or the loss is NaN or Inf.
        """
        rng = np.random.default_rng(0) if rng is None else rng
        analytic = self.gradients(**batch)
        errors = {}
        for name, g in analytic.items():
            flat = self.params[name].reshape(-1)
            idx = np.arange(flat.size) if flat.size <= entries else rng.choice(flat.size, entries, replace=False)
            # A NaN or Inf anywhere in the gradient (not only in the entries sampled) is a failure:
            # inf, never NaN, since max() and <= comparisons quietly skip NaN
            if not np.isfinite(g).all():
                errors[name] = math.inf
                continue
            worst, floor = 0.0, max(1e-2 * float(np.abs(g).max()), 1e-8)
            for i in idx:
                old = flat[i]
                flat[i] = old + eps
                up = self.loss(**batch)
                flat[i] = old - eps
                down = self.loss(**batch)
                flat[i] = old
                num, ana = (up - down) / (2 * eps), float(g.reshape(-1)[i])
                # each loss is rounded by several ulps through its sums: a finite
                # difference cannot see below that, over 2 eps (NaN and Inf stay NaN here)
                noise = 16 * np.finfo(np.float64).eps * max(abs(up), abs(down)) / (2 * eps)
                err = max(abs(num - ana) - noise, 0.0) / max(abs(num), abs(ana), floor)
                worst = max(worst, err if math.isfinite(err) else math.inf)
            errors[name] = worst
        return errors

    def __repr__(self) -> str:
        return f"<Trainer {self.kernels.MODEL!r} dtype={self.dtype} params={list(self.params)} t={self.t}>"
