"""Learning-rate schedules and early stopping for ``fit``. Imports only NumPy.

(Copied into standalone packages with the rest of the runtime; ``sb.schedules`` and
``sb.EarlyStopping`` are this module's names.)

A schedule is a pure function of the base learning rate and a count ``k``: the number of
epochs done (``per="epoch"``, the default, as ``scheduler.step()`` once an epoch in PyTorch)
or of optimiser steps done in the run (``per="step"``, ``scheduler.step()`` after every
batch). Every step of an epoch, or each step, uses ``lr(base, k)``; ``k = 0`` is the first.
The formulas are the closed forms of ``torch.optim.lr_scheduler`` (StepLR, ExponentialLR,
CosineAnnealingLR, LinearLR; Warmup is SequentialLR([LinearLR, then], [steps])). PyTorch
itself updates the rate by recurrences, which equal these to rounding (1e-15 relative);
a closed form depends on nothing but ``k``, so a resumed run uses the very same rates.

Early stopping (Keras's rule): after each epoch the monitored metric either improves on
the best so far by more than ``min_delta`` (the best and, with ``restore_best``, a copy of
the weights are kept) or the wait grows by one; ``fit`` stops when the wait reaches
``patience``. Both keep their state in ``fit``'s checkpoints, so a resumed run stops where
the uninterrupted one did and restores the same weights.
"""

from __future__ import annotations

import inspect
import math
import re

import numpy as np

from .trainer import DataError, to_numbers

PERIODS = ("epoch", "step")


def _number(owner: str, name: str, v, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """``v`` as a float if it is a number in [low, high] ((low, high] with ``low_open``), else a DataError."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and (low < v if low_open else low <= v) and v <= high and math.isfinite(v)
    if not ok:
        where = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high < math.inf else \
            f"{'above' if low_open else 'at least'} {low:g}"
        raise DataError(f"{owner}: {name} must be a finite number {where}, got {v!r}")
    return float(v)


def _count(owner: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise DataError(f"{owner}: {name} must be a positive int, got {v!r}")
    return int(v)


class Schedule:
    """Base: the learning rate as a function of the base rate and the count ``k``.

    Args:
        per: "epoch" (count epochs, the rate changes between epochs) or "step" (count
            optimiser steps of the run).
    """

    def __init__(self, per: str = "epoch"):
        if per not in PERIODS:
            raise DataError(f"{type(self).__name__}: per must be 'epoch' or 'step', got {per!r}")
        self.per = per

    def lr(self, base: float, k: int) -> float:
        """The learning rate after ``k`` epochs (or steps), from the base rate ``base``."""
        raise NotImplementedError

    def _args(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = {**self._args(), "per": self.per}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


class Step(Schedule):
    """StepLR: ``base * gamma ** (k // step_size)``; the rate falls by ``gamma`` every ``step_size``."""

    def __init__(self, step_size: int, gamma: float = 0.1, per: str = "epoch"):
        super().__init__(per)
        self.step_size = _count("Step", "step_size", step_size)
        self.gamma = _number("Step", "gamma", gamma, 0.0)

    def lr(self, base, k):
        return base * self.gamma ** (k // self.step_size)

    def _args(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class Exponential(Schedule):
    """ExponentialLR: ``base * gamma ** k``."""

    def __init__(self, gamma: float, per: str = "epoch"):
        super().__init__(per)
        self.gamma = _number("Exponential", "gamma", gamma, 0.0)

    def lr(self, base, k):
        return base * self.gamma ** k

    def _args(self):
        return {"gamma": self.gamma}


class Cosine(Schedule):
    """CosineAnnealingLR: ``eta_min + (base - eta_min) * (1 + cos(pi * k / T_max)) / 2``.

    The rate reaches ``eta_min`` at ``k = T_max`` and, as in PyTorch, rises again after it
    (no restarts: choose ``T_max`` as the run's length).
    """

    def __init__(self, T_max: int, eta_min: float = 0.0, per: str = "epoch"):  # noqa: N803 - PyTorch's name
        super().__init__(per)
        self.T_max = _count("Cosine", "T_max", T_max)
        self.eta_min = _number("Cosine", "eta_min", eta_min, 0.0)

    def lr(self, base, k):
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * k / self.T_max)) / 2

    def _args(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class Linear(Schedule):
    """LinearLR: the factor of ``base`` goes linearly from ``start_factor`` to ``end_factor``
    over ``total_iters``, then stays: ``base * (s + (e - s) * min(k, total_iters) / total_iters)``."""

    def __init__(self, start_factor: float = 1 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 per: str = "epoch"):
        super().__init__(per)
        # PyTorch's bounds: a factor 0 at the start would make its recurrence divide by 0
        self.start_factor = _number("Linear", "start_factor", start_factor, 0.0, 1.0, low_open=True)
        self.end_factor = _number("Linear", "end_factor", end_factor, 0.0, 1.0)
        self.total_iters = _count("Linear", "total_iters", total_iters)

    def lr(self, base, k):
        s, e = self.start_factor, self.end_factor
        return base * (s + (e - s) * min(k, self.total_iters) / self.total_iters)

    def _args(self):
        return {"start_factor": self.start_factor, "end_factor": self.end_factor, "total_iters": self.total_iters}


class Warmup(Schedule):
    """Linear warm-up from ``start_factor * base`` to ``base`` over ``steps``, then ``then``
    counted from 0 (PyTorch's SequentialLR([LinearLR(start_factor, 1, steps), then], [steps])).

    Args:
        steps: the length of the warm-up, in ``per`` units.
        then: the schedule after it (None: the base rate); counted in the same units.
        start_factor: the first rate as a fraction of the base.
        per: "epoch" or "step" (``then`` must count the same).
    """

    def __init__(self, steps: int, then: Schedule | None = None, start_factor: float = 1 / 3, per: str = "epoch"):
        super().__init__(per)
        self.warm = Linear(start_factor, 1.0, _count("Warmup", "steps", steps), per)
        if then is not None and not isinstance(then, Schedule):
            raise DataError(f"Warmup: then must be a schedule (sb.schedules.Cosine(...), ...), got {then!r}")
        if then is not None and then.per != per:
            raise DataError(f"Warmup: counts per {per!r} but then={then!r} counts per {then.per!r}; "
                            "give both the same per=")
        self.steps, self.then, self.start_factor = self.warm.total_iters, then, self.warm.start_factor

    def lr(self, base, k):
        if k < self.steps:
            return self.warm.lr(base, k)
        return base if self.then is None else self.then.lr(base, k - self.steps)

    def _args(self):
        return {"steps": self.steps, "then": self.then, "start_factor": self.start_factor}


class EarlyStopping:
    """Stop ``fit`` when a metric of its history stops improving, and keep the best weights.

    Args:
        monitor: the metric: "val_loss" (default), "val_accuracy", "loss" or "accuracy".
        patience: epochs without improvement after which training stops.
        min_delta: the least change that counts as an improvement.
        mode: "min", "max", or "auto" ("max" for accuracies, else "min").
        restore_best: when ``fit`` ends (stopped or not), put back the weights of the best
            epoch (the parameters; the optimiser state and step count stay the last ones).
    Attributes (after ``fit``): ``best`` (the best value), ``best_epoch`` (1-based),
    ``stopped_epoch`` (the epoch it stopped after; 0 if it did not stop).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = True):
        if not isinstance(monitor, str):
            raise DataError(f"EarlyStopping: monitor must be a metric's name such as 'val_loss', got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise DataError(f"EarlyStopping: patience must be a non-negative int, got {patience!r}")
        if mode not in ("auto", "min", "max"):
            raise DataError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.restore_best = monitor, int(patience), bool(restore_best)
        self.min_delta = _number("EarlyStopping", "min_delta", min_delta, 0.0)
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.start()

    def start(self) -> None:
        """Forget any previous run: no best yet, no wait."""
        self.best, self.best_epoch, self.wait, self.stopped_epoch = None, 0, 0, 0
        self.best_params: dict | None = None

    def update(self, epoch: int, metrics: dict, params: dict) -> bool:
        """Take the metrics of epoch ``epoch`` (1-based); True when training should stop."""
        value = float(metrics[self.monitor])
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:  # NaN never is: it compares False
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_params = {k: np.array(v, copy=True) for k, v in params.items()}
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
        return self.wait >= self.patience

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta!r}, "
                f"mode={self.mode!r}, restore_best={self.restore_best})")


class Controls:
    """What ``fit`` asks of a schedule and early stopping: the rate before each step, whether
    to stop after each epoch, their part of a checkpoint, and the clean-up at the end.

    Args:
        tr: the Trainer (its ``hyper["lr"]`` is what the compiled step reads).
        schedule: a Schedule or None.
        stopping: an EarlyStopping or None.
        metrics: the names of the metrics this run reports each epoch.
    """

    def __init__(self, tr, schedule, stopping, metrics: list):
        if schedule is not None and not isinstance(schedule, Schedule):
            raise DataError(f"fit(): lr_schedule must be a schedule (sb.schedules.Cosine(...), ...), got {schedule!r}")
        if stopping is not None and not isinstance(stopping, EarlyStopping):
            raise DataError(f"fit(): early_stopping must be an sb.EarlyStopping(...), got {stopping!r}")
        if schedule is not None and "lr" not in tr.hyper:
            raise DataError(f"fit(): lr_schedule needs an optimiser with a learning rate 'lr'; this one has "
                            f"{', '.join(tr.hyper) or 'no hyperparameters'}")
        if stopping is not None and stopping.monitor not in metrics:
            hint = " (it needs validation data)" if stopping.monitor.startswith("val_") else ""
            raise DataError(f"fit(): early_stopping monitors {stopping.monitor!r}, which this run does not report"
                            f"{hint}; it reports {', '.join(metrics)}")
        self.tr, self.schedule, self.stopping = tr, schedule, stopping
        self.base = tr.hyper.get("lr")
        self.stopped = False
        if stopping is not None:
            stopping.start()

    def config(self) -> dict:
        """What a resumed run must share with the checkpoint (readable in an error message)."""
        return {"lr_schedule": None if self.schedule is None else repr(self.schedule),
                "early_stopping": None if self.stopping is None else repr(self.stopping)}

    def before_step(self, epoch: int, steps: int) -> None:
        """Set the learning rate of the next step, ``epoch`` epochs and ``steps`` steps into the run."""
        if self.schedule is not None:
            self.tr.hyper["lr"] = float(self.schedule.lr(self.base, epoch if self.schedule.per == "epoch" else steps))

    def end_epoch(self, epoch: int, metrics: dict, history: dict) -> bool:
        """After epoch ``epoch`` (1-based) with its ``metrics``: True when training should stop.
        With a schedule, the rate of the epoch's last step goes to ``history["lr"]``."""
        if self.schedule is not None:
            history.setdefault("lr", []).append(self.tr.hyper["lr"])
        if self.stopping is not None:
            self.stopped = self.stopping.update(epoch, metrics, weights(self.tr))
        return self.stopped

    def state(self) -> tuple[dict, dict]:
        """The JSON-able state and the arrays (``_best.<param>``) a checkpoint keeps."""
        meta, arrays = {"base_lr": self.base, "stopped": self.stopped}, {}
        es = self.stopping
        if es is not None:
            meta["early_stopping"] = {"best": es.best, "best_epoch": es.best_epoch, "wait": es.wait,
                                      "stopped_epoch": es.stopped_epoch}
            arrays = {f"_best.{k}": v for k, v in (es.best_params or {}).items()}
        return meta, arrays

    def restore(self, path, meta: dict, arrays: dict) -> None:
        """Continue from the state ``state()`` wrote into checkpoint ``path``."""
        self.stopped = bool(meta.get("stopped", False))
        if self.schedule is not None:
            self.base = meta.get("base_lr", self.base)
        es = self.stopping
        if es is not None:
            s = meta.get("early_stopping") or {}
            es.best, es.best_epoch, es.wait, es.stopped_epoch = (s.get(k, d) for k, d in (
                ("best", None), ("best_epoch", 0), ("wait", 0), ("stopped_epoch", 0)))
            best = {k[len("_best."):]: v for k, v in arrays.items() if k.startswith("_best.")}
            if es.restore_best and es.best is not None:
                if set(best) != set(weights(self.tr)):
                    raise DataError(f"resume: {path} lacks the best weights early stopping kept")
                shapes = {**self.tr.kernels.PARAMS, **{f"buffer.{k}": s for k, s in self.tr.buffers._shapes.items()}}
                es.best_params = {k: np.array(to_numbers(path, f"best weights '_best.{k}'", v, shapes[k]),
                                              dtype=self.tr.dtype) for k, v in best.items()}

    def finish(self, completed: bool) -> None:
        """At the end of ``fit``: the base rate back in ``tr.hyper``, and (when the run completed)
        the best weights back in ``tr.params``."""
        if self.schedule is not None:
            self.tr.hyper["lr"] = self.base
        es = self.stopping
        if completed and es is not None and es.restore_best and es.best_params is not None:
            for k, v in es.best_params.items():
                if k.startswith("buffer."):
                    self.tr.buffers[k[len("buffer."):]] = v
                else:
                    self.tr.params[k] = v


def weights(tr) -> dict:
    """What early stopping keeps of the best epoch: the parameters, and the buffers (running
    statistics, under ``buffer.<name>``: a dot cannot occur in a parameter name) that go with them."""
    return {**tr.params, **{f"buffer.{k}": v for k, v in tr.buffers.items()}}


NAMES = {"step": Step, "exponential": Exponential, "cosine": Cosine, "linear": Linear}
"""The schedules the command lines know (``--lr-schedule NAME[:key=value,...]``)."""


def add_command_line(parser) -> None:
    """Declare the schedule and early-stopping options (read by :func:`from_command_line`) on an
    argparse parser: ``symbp train`` and a package's ``train`` take the same ones."""
    parser.add_argument("--lr-schedule", metavar="NAME[:k=v,...]", help="step, exponential, cosine or linear, "
                        "with PyTorch's settings: cosine (T_max: the epochs), step:step_size=10,gamma=0.5, ...")
    parser.add_argument("--warmup", type=int, help="epochs of linear warm-up (steps with per=step)")
    parser.add_argument("--patience", type=int, help="stop early after this many epochs without improvement")
    parser.add_argument("--monitor", help="early stopping's metric (default val_loss with --validation, else loss)")


def from_command_line(schedule: str | None, warmup: int | None, patience: int | None, monitor: str | None,
                      epochs: int, validation: bool) -> tuple:
    """The ``fit`` arguments ``(lr_schedule, early_stopping)`` of the training commands' options.

    Args:
        schedule: ``NAME[:key=value,...]``, e.g. ``cosine`` (T_max: the epochs after any warm-up),
            ``step:step_size=10,gamma=0.5``, ``cosine:T_max=2000,per=step``; None: none.
        warmup: epochs (or steps, with ``per=step``) of linear warm-up before it; None: none.
        patience: early stopping's patience; None: no early stopping.
        monitor: its metric (default ``val_loss`` with validation data, else ``loss``).
        epochs: the run's length, for ``cosine`` without T_max.
        validation: whether validation data was given.
    Returns:
        The two objects (either may be None).
    """
    then, per = None, "epoch"
    if schedule:
        name, _, rest = schedule.partition(":")
        if name not in NAMES:
            raise DataError(f"--lr-schedule: unknown schedule {name!r}; choose from {', '.join(NAMES)}")
        kinds = inspect.signature(NAMES[name]).parameters
        settings = {}
        for item in filter(None, rest.split(",")):
            key, eq, text = item.partition("=")
            if not eq or key not in kinds:
                raise DataError(f"--lr-schedule: {name} takes {', '.join(f'{k}=...' for k in kinds)}; got {item!r}")
            # numbers are read as numbers, never evaluated
            settings[key] = text if key == "per" else int(text) if re.fullmatch(r"[+-]?\d+", text) else \
                _float(name, key, text)
        if name == "cosine" and "T_max" not in settings:
            settings["T_max"] = max(epochs - (warmup or 0), 1)
        try:
            then = NAMES[name](**settings)
        except TypeError:  # a required setting missing
            needed = [f"{k}=..." for k, v in kinds.items() if v.default is v.empty]
            raise DataError(f"--lr-schedule: {name} needs {', '.join(needed)}") from None
        per = then.per
    lr_schedule = then if warmup is None else Warmup(warmup, then, per=per)
    stopping = None if patience is None else EarlyStopping(monitor or ("val_loss" if validation else "loss"),
                                                           patience)
    return lr_schedule, stopping


def _float(name: str, key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"--lr-schedule: {name}: {key} must be a number, got {text!r}") from None
