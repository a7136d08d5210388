"""Command line of a standalone training module: ``python -m NAME --selftest`` and
``python -m NAME train data.npz --epochs N``. Imports only NumPy.

(This file is copied verbatim into every package symbp builds.)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import DTYPE, INPUTS, MODEL, plot_history, trainer
from .distributed import is_root, stop_all
from .inference import NoLoss
from .plots import need_matplotlib
from .schedules import add_command_line, from_command_line
from .trainer import DataError, NonFiniteLoss

# Relative error tolerated between the compiled-dtype kernels and the float64 ones. float32
# rounds each operation to ~6e-8; through a few dozen operations and sums over a batch that
# grows to ~1e-5, so 1e-3 separates rounding from a wrong kernel by two orders of magnitude.
AGREEMENT = {"float64": 1e-12, "float32": 1e-3}


def random_batch(rng, batch: int) -> dict:
    """Random data for every input: standard normal floats; ints within what the model accepts
    (``_build.INT_RANGES``: classes, lengths, embedding rows; CTC labels never the blank), and
    CTC label sequences shortened until they fit in their examples' steps."""
    from . import _build

    out = {}
    for name, (shape, kind) in INPUTS.items():
        dims = tuple(batch if d is None else d for d in shape)
        if kind == "int64":
            low, high = _build.INT_RANGES.get(name, (0, 2))
            out[name] = rng.integers(low, max(high, low + 1), dims)
        else:
            out[name] = rng.normal(0.0, 1.0, dims)
    if _build.CTC:
        steps = np.min([out[k] for k in _build.CTC["steps"]], axis=0)
        for labels, lengths in _build.CTC["labels"]:
            for b in range(batch):  # a repeated label needs a blank between: one more step
                while out[lengths][b] > 0 and _ctc_steps(out[labels][b, :out[lengths][b]]) > steps[b]:
                    out[lengths][b] -= 1
    return out


def _ctc_steps(labels) -> int:
    """The fewest steps CTC aligns ``labels`` to: one each, and one blank between repeats."""
    return len(labels) + int(np.sum(labels[1:] == labels[:-1]))


def selftest(batch: int = 4, entries: int = 16, eps: float = 1e-5, tolerance: float = 1e-5, seed: int = 0) -> bool:
    """Check the gradients of the float64 kernels against central finite differences, then
    the compiled kernels against the float64 ones. Prints a table; returns the verdict.

    Errors are relative, floored at 1% of each parameter's largest gradient entry (see
    ``Trainer.finite_difference_errors``).
    """
    rng = np.random.default_rng(seed)
    data = random_batch(rng, batch)
    ref = trainer(float64=True)
    if "loss" not in ref.kernels.NEEDS:  # an inference model: no loss, no gradients to check
        return _selftest_predict(ref, data)
    analytic = ref.gradients(**data)
    ok = True
    print(f"{MODEL}: gradients of the float64 kernels vs central differences (eps={eps:g}, batch {batch})")
    truncated = getattr(ref.kernels, "TRUNCATED", {})
    if truncated:  # truncated BPTT: the gradients are by design not those of the loss
        loops = ", ".join(f"{k!r} {v}" for k, v in truncated.items())
        print(f"  skipped: truncated BPTT in loop(s) {loops}; finite differences check the full loss")
    for name, worst in ({} if truncated else ref.finite_difference_errors(data, eps, entries, rng)).items():
        ok &= worst <= tolerance
        print(f"  {name:<24} {worst:.2e}  {'ok' if worst <= tolerance else 'FAIL'}")
    tr = trainer()
    got = tr.gradients(**data)
    num = sum(float(np.sum((got[k].astype(np.float64) - analytic[k]) ** 2)) for k in analytic)
    den = sum(float(np.sum(analytic[k] ** 2)) for k in analytic)
    err = (num / max(den, 1e-300)) ** 0.5
    loss_err = abs(tr.loss(**data) - ref.loss(**data)) / max(abs(ref.loss(**data)), 1e-12)
    tol = AGREEMENT.get(DTYPE, 1e-3)
    agree = err <= tol and loss_err <= tol
    ok &= agree
    print(f"{DTYPE} kernels vs float64: gradients {err:.1e}, loss {loss_err:.1e} relative "
          f"(tolerance {tol:g})  {'ok' if agree else 'FAIL'}")
    print("selftest passed" if ok else "selftest FAILED")
    return ok


def _selftest_predict(ref, data: dict) -> bool:
    """The self-test of a model without a loss: the compiled kernels' outputs against float64's."""
    got, want = trainer().predict(**data), ref.predict(**data)
    tol = AGREEMENT.get(DTYPE, 1e-3)
    ok = True
    print(f"{MODEL}: no loss (inference only); {DTYPE} kernels' outputs vs float64")
    for name, w in want.items():
        err = float(np.abs(got[name] - w).max() / max(float(np.abs(w).max()), 1e-12))
        ok &= err <= tol
        print(f"  {name:<24} {err:.1e} relative  {'ok' if err <= tol else 'FAIL'}")
    print("selftest passed" if ok else "selftest FAILED")
    return ok


def _load(path: str, what: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise SystemExit(f"{what}: cannot read {path}: {e}") from None


def train(args) -> int:
    """The ``train`` command: fit on a .npz, save the weights (and optional checkpoints/plot)."""
    if args.plot:
        try:
            need_matplotlib()
        except ImportError as e:
            print(f"train: {e}", file=sys.stderr)
            return 1
    tr = trainer(args.weights, distributed="mpi" if args.mpi else None)
    if args.lr is not None:
        tr.hyper["lr"] = args.lr
    data = _load(args.data, "train")
    val = _load(args.validation, "validation") if args.validation else None
    try:
        schedule, stopping = from_command_line(args.lr_schedule, args.warmup, args.patience, args.monitor,
                                               args.epochs, val is not None)
        hist = tr.fit(data, epochs=args.epochs, batch_size=args.batch_size, validation=val, seed=args.seed,
                      checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                      resume=args.checkpoint if args.resume else None, progress=not args.quiet,
                      lr_schedule=schedule, early_stopping=stopping)
    except (DataError, NonFiniteLoss, NoLoss) as e:
        print(f"train: {e}", file=sys.stderr)
        return stop_all(1)  # one rank of several failing: stop them all
    if not is_root(tr):  # under mpiexec, rank 0 alone saves and reports
        return 0
    tr.save(args.out)
    last = {k: v[-1] for k, v in hist.items() if k not in ("epoch", "step", "step_loss") and v}
    print(f"trained {hist['epoch'][-1] if hist['epoch'] else 0} epochs ({tr.t} steps): "
          + "  ".join(f"{k} {v:.4f}" for k, v in last.items()) + f"; weights in {args.out}")
    if args.plot:
        plot_history(hist, args.plot)
        print(f"loss curves in {args.plot}")
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m NAME`` and of the ``NAME`` console script."""
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}",
                                 description=f"Training module for the model {MODEL!r} (generated by symbp).")
    ap.add_argument("--selftest", action="store_true", help="check gradients against finite differences")
    sub = ap.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train on a .npz file (one array per input name)")
    t.add_argument("data", help=".npz with arrays named " + ", ".join(INPUTS))
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: as built)")
    t.add_argument("--seed", type=int, default=0, help="seeds the shuffling (dropout draws from the package's SEED)")
    add_command_line(t)  # --lr-schedule, --warmup, --patience, --monitor
    t.add_argument("--validation", help=".npz evaluated after each epoch")
    t.add_argument("--weights", help="start from these weights (.npz from a previous run)")
    t.add_argument("--out", default=f"{__package__}_trained.npz", help="where to save the trained weights")
    t.add_argument("--checkpoint", help="checkpoint file (written atomically)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    t.add_argument("--plot", help="save loss curves to this PNG (needs matplotlib)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--mpi", action="store_true", help="train on every process of mpiexec together "
                   "(mpiexec -n 4 python -m PACKAGE train ... --mpi; needs the package's [mpi] extra)")
    args = ap.parse_args(argv)
    if args.selftest:
        return 0 if selftest() else 1
    if args.command == "train":
        if args.resume and not args.checkpoint:
            ap.error("--resume needs --checkpoint FILE")
        return train(args)
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
