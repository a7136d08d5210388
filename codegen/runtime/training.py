"""The training loop: shuffled minibatches, progress, validation, checkpoints, resume (the
files themselves: ``weights.py``).

Imports only NumPy (tqdm and matplotlib when present and asked for): ``sb.build`` copies
this file into standalone packages beside ``runtime.py``.

Resuming is exact. A checkpoint stores the weights, the optimiser state and step count, the
carried state of stateful recurrences (which only training steps advance), the shuffling
RNG's state *at the start of the current epoch*, how many batches of that epoch are done,
and the losses seen so far. Resuming restores the RNG, draws the same permutation
again and skips the batches already done, so an interrupted and resumed run computes the
same numbers as an uninterrupted one (bit for bit in float64 on the NumPy backend). A learning-
rate schedule and early stopping (``schedules.py``) keep their state in the checkpoint too.

Accuracy is reported when the model has a class output: exactly one int64 input of shape
(batch,) used as class labels (C classes, through the loss's one-hot), and a named output
(``m.output``) of shape (batch, C) — probabilities or logits, the argmax is the same. The
first such output counts; the training accuracy of a batch is measured before its update.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from .distributed import shard
from .schedules import Controls
from .trainer import DataError, NonFiniteLoss


def accuracy_pair(tr) -> tuple[str, str] | None:
    """``(output name, label input name)`` when accuracy is meaningful (see above), else None."""
    k = tr.kernels
    labels = [(name, c) for name, c in k.CLASSES.items() if tuple(k.INPUTS[name][0]) == (None,)]
    if len(labels) != 1:
        return None
    label, classes = labels[0]
    for name, shape in k.OUTPUTS.items():
        if tuple(shape) == (None, classes):
            return name, label
    return None


def _batches(n: int, batch_size: int):
    return range(0, n, batch_size)


def evaluate(tr, data: dict, batch_size: int = 256) -> dict:
    """Mean loss (weighted by batch size) and accuracy over ``data``."""
    pair = accuracy_pair(tr)
    names = list(dict.fromkeys(tr._needs("loss") + (tr._needs("predict") if pair else [])))
    data = tr._batch(data, names, "evaluate")
    n = len(next(iter(data.values())))
    total, correct = 0.0, 0
    for i in _batches(n, batch_size):
        b = {k: v[i:i + batch_size] for k, v in data.items()}
        size = len(next(iter(b.values())))
        total += tr._run("evaluate", {k: b[k] for k in tr._needs("loss")}) * size  # inference mode
        if pair:
            correct += _correct(tr, b, pair)
    out = {"loss": total / n}
    if pair:
        out["accuracy"] = correct / n
    return out


def _correct(tr, batch: dict, pair) -> int:
    out = tr._run("predict", {k: batch[k] for k in tr._needs("predict")})[pair[0]]
    return int((out.argmax(axis=-1) == batch[pair[1]]).sum())


class _Progress:
    """A tqdm bar per epoch when tqdm is installed (and wanted), else one printed line per epoch."""

    def __init__(self, enabled: bool):
        self.tqdm = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm
            except ImportError:
                pass
        self.enabled, self.bar = enabled, None

    def start(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.tqdm is not None:
            self.bar = self.tqdm(total=total, initial=done, desc=f"epoch {epoch}/{epochs}", leave=True,
                                 unit="batch", dynamic_ncols=True)

    def update(self, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)
            self.bar.update(1)

    def end(self, epoch: int, epochs: int, metrics: dict) -> None:
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})
            self.bar.close()
            self.bar = None
        elif self.enabled:
            print(f"epoch {epoch}/{epochs}  {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def fit(tr, data: dict, epochs: int = 1, batch_size: int = 32, validation: dict | None = None,
        shuffle: bool = True, seed: int = 0, checkpoint=None, checkpoint_every: int | None = None,
        resume=None, progress: bool = True, lr_schedule=None, early_stopping=None) -> dict:
    """Train ``tr`` on ``data`` for ``epochs`` passes in minibatches.

    Args:
        tr: a Trainer.
        data: arrays by input name, all with the same number of examples.
        epochs: the epoch to stop after (counted from the start of the run, resumed or not).
        batch_size: examples per step; the last batch of an epoch may be smaller.
        validation: arrays by input name, evaluated after each epoch (``val_loss``, ...).
        shuffle: draw a new permutation each epoch (from ``seed``), else keep data order.
        seed: seeds the shuffling RNG.
        checkpoint: a path; written every ``checkpoint_every`` steps and at the end.
        checkpoint_every: steps between checkpoints (None: only at the end).
        resume: a checkpoint path to continue from (same data, batch size, shuffle and seed).
        progress: show a progress bar (tqdm) or per-epoch lines.
        lr_schedule: a ``schedules.Schedule`` (``sb.schedules.Cosine(T_max)``, ...) setting
            ``tr.hyper["lr"]`` before each step from the rate the run started with, which
            ``tr.hyper["lr"]`` holds again when fit returns.
        early_stopping: an ``EarlyStopping`` (``sb.EarlyStopping(patience=3)``): stop when its
            metric stops improving; with ``restore_best``, end with the best epoch's weights.
    Returns:
        History: per-epoch lists ``epoch``, ``step``, ``loss`` (mean over the epoch's steps),
        ``accuracy`` (when the model has a class output), ``val_loss``/``val_accuracy``
        (with ``validation``), ``lr`` (with a schedule: the rate of the epoch's last step),
        and ``step_loss`` (every step's loss).
    Raises:
        NonFiniteLoss: the loss became NaN/Inf; the message gives the step, epoch and batch.
    """
    for what, v in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if what == "epochs" else 1):
            raise DataError(f"fit(): {what} must be a {'non-negative' if what == 'epochs' else 'positive'} "
                            f"int, got {v!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise DataError(f"fit(): checkpoint_every must be a positive int, got {checkpoint_every!r}")
    pair = accuracy_pair(tr)
    names = list(dict.fromkeys(tr._needs("gradients") + (tr._needs("predict") if pair else [])))
    data = tr._batch(data, names, "fit")
    n = len(next(iter(data.values())))
    per_epoch = math.ceil(n / batch_size)
    dist = tr.dist if getattr(tr, "dist", None) is not None and tr.dist.size > 1 else None
    # distributed: every rank holds the whole data set and draws the same permutation; each
    # global batch of batch_size is cut into one contiguous part per rank (distributed.shard)
    config = {"examples": n, "batch_size": batch_size, "shuffle": bool(shuffle), "seed": seed,
              "ranks": 1 if dist is None else dist.size}
    _check_batch_stats(tr, n, batch_size, config["ranks"])
    rng = np.random.default_rng(seed)
    hist = {"epoch": [], "step": [], "loss": []}
    if pair:
        hist["accuracy"] = []
    if validation is not None:
        hist["val_loss"] = []
        if pair:
            hist["val_accuracy"] = []
    ctl = Controls(tr, lr_schedule, early_stopping, [k for k in hist if k not in ("epoch", "step")])
    config.update(ctl.config())
    step_loss: list[float] = []
    epoch, done, correct = 0, 0, 0
    if resume is not None:
        epoch, done, correct, hist, step_loss = _resume(tr, resume, config, rng, ctl)
    saved = tr.t if resume is not None else None  # the step of the last checkpoint written or read
    bar, completed = _Progress(progress and (dist is None or dist.rank == 0)), False

    def local(b: int, order) -> np.ndarray:  # this rank's examples of batch b
        idx = order[b * batch_size:(b + 1) * batch_size]
        return idx if dist is None else idx[shard(len(idx), dist.rank, dist.size)]

    try:
        while epoch < epochs and not ctl.stopped:
            start_state = rng.bit_generator.state
            order = rng.permutation(n) if shuffle else np.arange(n)
            first = len(step_loss) - done  # index of this epoch's first step in step_loss
            seen = sum(len(local(b, order)) for b in range(done))  # this rank's examples so far
            bar.start(epoch + 1, epochs, per_epoch, done)
            for b in range(done, per_epoch):
                idx = local(b, order)
                batch = {k: v[idx] for k, v in data.items()}
                seen += len(idx)
                if pair and len(idx):
                    correct += _correct(tr, batch, pair)
                ctl.before_step(epoch, len(step_loss))
                try:
                    loss = tr._step({k: batch[k] for k in tr._needs("gradients")})
                except NonFiniteLoss as e:
                    bar.close()
                    where = f" The last checkpoint, after step {saved}, is in {checkpoint}." if saved else ""
                    raise NonFiniteLoss(f"fit stopped in epoch {epoch + 1}, batch {b + 1} of {per_epoch}: {e}"
                                        + where) from None
                step_loss.append(loss)
                metrics = {"loss": float(np.mean(step_loss[first:]))}
                if pair:  # distributed: on rank 0's examples (the epoch's figure counts all)
                    metrics["accuracy"] = correct / max(seen, 1)
                bar.update(metrics)
                if checkpoint is not None and checkpoint_every and len(step_loss) % checkpoint_every == 0:
                    _save(tr, checkpoint, config, start_state, epoch, b + 1, correct, hist, step_loss, ctl)
                    saved = tr.t
            metrics = {"loss": float(np.mean(step_loss[first:]))}
            if pair:
                metrics["accuracy"] = (correct if dist is None else float(dist.sum([correct])[0])) / n
            if validation is not None:
                val = evaluate(tr, validation) if dist is None else dist.evaluate(tr, validation)
                metrics.update({f"val_{k}": v for k, v in val.items()})
            for k, v in metrics.items():
                hist[k].append(v)
            hist["epoch"].append(epoch + 1)
            hist["step"].append(tr.t)
            ctl.end_epoch(epoch + 1, metrics, hist)
            bar.end(epoch + 1, epochs, metrics)
            epoch, done, correct = epoch + 1, 0, 0
        if checkpoint is not None:  # the last weights, not the best: resuming it continues exactly
            _save(tr, checkpoint, config, rng.bit_generator.state, epoch, 0, 0, hist, step_loss, ctl)
        completed = True
    finally:
        bar.close()
        ctl.finish(completed)
    hist["step_loss"] = step_loss
    return hist


def _check_batch_stats(tr, n: int, batch_size: int, ranks: int) -> None:
    """Refuse before training a run whose smallest step (the last batch, or a rank's part of one)
    gives a layer normalising over the batch (BatchNorm) one value per feature: that step would
    fail mid-epoch (``values.check_batch_stats``)."""
    stats = getattr(tr.kernels, "BATCH_STATS", None)
    if not stats:
        return
    last = n - (math.ceil(n / batch_size) - 1) * batch_size
    smallest = min(k for b in (min(batch_size, n), last) for r in range(ranks)
                   if (k := len(range(b)[shard(b, r, ranks)])))
    for label, per_example in stats.items():
        if smallest * per_example < 2:
            where = f" on {ranks} ranks" if ranks > 1 else ""
            raise DataError(f"fit(): layer {label!r} normalises each feature over the batch, and {n} examples in "
                            f"batches of {batch_size}{where} make a step with a batch of {smallest} example, one "
                            "value per feature; choose a batch_size (or drop examples) so that no step has one")


def _save(tr, path, config, rng_state, epoch, done, correct, hist, step_loss, ctl) -> None:
    controls, arrays = ctl.state()
    dist = tr.dist if config["ranks"] > 1 else None
    if dist is not None:  # rank 0 writes every rank's accuracy count and carried state
        correct, more = dist.rank_state(tr, correct)
        if dist.rank:
            dist.comm.Barrier()
            return
        arrays.update(more)
    fit_meta = {"config": config, "rng": rng_state, "epoch": epoch, "done": done, "correct": correct,
                "history": hist, "controls": controls}
    tr.save(path, extra={"_step_loss": np.array(step_loss, dtype=np.float64), **arrays}, meta={"fit": fit_meta})
    if dist is not None:  # the file is complete before any rank goes on (and might read it)
        dist.comm.Barrier()


def _resume(tr, path, config: dict, rng, ctl):
    if not os.path.exists(path):
        raise DataError(f"resume: there is no checkpoint {path}")
    meta = tr.load(path)
    state = meta.get("fit")
    if state is None:
        raise DataError(f"resume: {path} holds weights but no training-loop state; pass it to tr.load() instead")
    for k, v in config.items():
        # files from before schedules have neither: None, as when not given; from before MPI, 1 rank
        written = state["config"].get(k, 1 if k == "ranks" else None)
        if written != v:
            raise DataError(f"resume: {path} was written with {k}={written!r}, "
                            f"this run has {k}={v!r}; resuming needs the same data and settings")
    rng.bit_generator.state = state["rng"]
    ctl.restore(path, state.get("controls", {}), meta["arrays"])
    step_loss = [float(x) for x in meta["arrays"]["_step_loss"]]
    correct = state["correct"]
    if config["ranks"] > 1:  # this rank's count and carried state
        correct = tr.dist.restore_rank_state(tr, path, correct, meta["arrays"])
    return state["epoch"], state["done"], correct, state["history"], step_loss
