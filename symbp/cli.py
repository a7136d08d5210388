"""The ``symbp`` command: equations, graph pictures, standalone builds, training, gradient checks.

    symbp equations model.py [--latex]
    symbp explain model.py --batch N [--optimizer adam] [--dtype float64] [--json]
    symbp graph model.py --format dot|svg [--backward] [-o FILE]
    symbp build model.py -o DIR [--backend numpy] [--dtype float32]
    symbp train model.py --data data.npz --epochs N
    symbp gradcheck model.py [--data data.npz]

A model file is a Python file that defines ``model`` (a ``symbp.Model``) or a function
``build()`` returning one. Errors raised while running it are reported as
``model.py:LINE: message`` with the offending line, not as a Python traceback.
"""

from __future__ import annotations

import argparse
import pathlib
import runpy
import sys
import traceback

import numpy as np

import symbp as sb
from symbp.ir import SymbpError

OPTIMIZERS = {"sgd": "SGD", "momentum": "Momentum", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}


class CliError(Exception):
    """A problem to report in one line (exit status 1), without a traceback."""


# -- model files ----------------------------------------------------------------------------

def _where(exc: BaseException, path: pathlib.Path) -> str:
    """``file:line: `` of the deepest frame of ``exc`` inside the model file ('' if none)."""
    target = path.resolve()
    if isinstance(exc, SyntaxError) and exc.filename and pathlib.Path(exc.filename).resolve() == target:
        return f"{path}:{exc.lineno}: "
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if pathlib.Path(f.filename).resolve() == target]
    if not frames:
        return f"{path}: "
    f = frames[-1]
    return f"{path}:{f.lineno}: " + (f"in `{f.line.strip()}`: " if f.line else "")


def load_model(path: str) -> sb.Derivation:
    """Run a model file and derive its model.

    Args:
        path: a Python file defining ``model`` (a Model or Derivation) or ``build()`` returning one.
    Returns:
        The Derivation.
    Raises:
        CliError: the file is missing, fails to run (message gives file:line), or defines no model.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise CliError(f"{path}: no such file")
    sys.path.insert(0, str(p.parent.resolve()))  # so the model file can import its neighbours
    try:
        ns = runpy.run_path(str(p), run_name="__symbp_model__")
        obj = ns.get("model")
        if obj is None and callable(ns.get("build")):
            obj = ns["build"]()
    except Exception as e:
        raise CliError(f"{_where(e, p)}{type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(p.parent.resolve()))
    if obj is None:
        raise CliError(f"{path}: defines neither `model` (a symbp.Model) nor `build()` returning one")
    if isinstance(obj, sb.Derivation):
        return obj
    if not isinstance(obj, sb.Model):
        raise CliError(f"{path}: `model` (or build()) gave a {type(obj).__name__}, not a symbp.Model")
    try:
        return sb.derive(obj)
    except SymbpError as e:
        raise CliError(f"{path}: {e}") from None


def load_npz(path: str) -> dict:
    """Arrays by name from a .npz file (CliError when unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CliError(f"{path}: not a readable .npz file ({e})") from None


def random_batch(d: sb.Derivation, batch: int, seed: int) -> dict:
    """Random data for every declared input: standard normal floats, labels within their classes."""
    from codegen.spec import Spec

    classes = Spec(d, sb.optim.SGD()).classes()
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in d.inputs.items():
        dims = tuple(batch if s is None else s for s in n.shape)
        out[name] = rng.integers(0, classes.get(name, 2), dims) if n.dtype == "int64" else rng.normal(0, 1, dims)
    return out


def _optimizer(args) -> sb.optim.Optimizer:
    cls = getattr(sb.optim, OPTIMIZERS[args.optimizer])
    return cls(**({"lr": args.lr} if args.lr is not None else {}))


# -- commands -------------------------------------------------------------------------------

def cmd_equations(args) -> int:
    d = load_model(args.model)
    eq = d.equations()
    print(eq.latex() if args.latex else str(eq))
    return 0


def cmd_explain(args) -> int:
    import json

    d = load_model(args.model)
    optimizer = _optimizer(args) if args.optimizer else None
    e = d.explain(batch=args.batch, optimizer=optimizer, dtype=args.dtype)
    print(json.dumps(e.data, indent=1) if args.json else str(e), end="\n" if args.json else "")
    return 0


def cmd_graph(args) -> int:
    from symbp.show.pictures import render_svg

    d = load_model(args.model)
    text = d.dot(backward=args.backward)
    if args.format == "svg":
        text = render_svg(text)
    if args.output:
        pathlib.Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_build(args) -> int:
    d = load_model(args.model)
    out = sb.build(d, args.output, backend=args.backend, optimizer=_optimizer(args), dtype=args.dtype,
                   seed=args.seed, name=args.name)
    name = args.name or d.name
    where = str(out) if out.is_absolute() else f"./{out}"  # pip reads a bare word as a PyPI name
    print(f"wrote the package {name!r} to {out}\n"
          f"  pip install {where}\n  python -m {name} --selftest\n  python -m {name} train data.npz --epochs 10")
    return 0


def cmd_train(args) -> int:
    from codegen.runtime.distributed import is_root
    from codegen.runtime.plots import need_matplotlib, plot_history
    from codegen.runtime.schedules import from_command_line

    if args.plot:
        need_matplotlib()
    d = load_model(args.model)
    data = load_npz(args.data)
    val = load_npz(args.validation) if args.validation else None
    schedule, stopping = from_command_line(args.lr_schedule, args.warmup, args.patience, args.monitor, args.epochs,
                                           val is not None)
    tr = sb.compile(d, backend=args.backend, optimizer=_optimizer(args), dtype=args.dtype, seed=args.seed,
                    distributed="mpi" if args.mpi else None)
    hist = tr.fit(data, epochs=args.epochs, batch_size=args.batch_size, validation=val, seed=args.seed,
                  checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                  resume=args.checkpoint if args.resume else None, progress=not args.quiet,
                  lr_schedule=schedule, early_stopping=stopping)
    if not is_root(tr):  # under mpiexec, rank 0 alone saves and reports
        return 0
    last = {k: v[-1] for k, v in hist.items() if k not in ("epoch", "step", "step_loss") and v}
    print(f"trained {d.name!r}: {hist['epoch'][-1] if hist['epoch'] else 0} epochs, {tr.t} steps; "
          + "  ".join(f"{k} {v:.4f}" for k, v in last.items()))
    out = args.out or f"{d.name}_trained.npz"
    tr.save(out)
    print(f"weights and optimiser state in {out}")
    if args.plot:
        plot_history(hist, args.plot)
        print(f"loss curves in {args.plot}")
    return 0


def cmd_gradcheck(args) -> int:
    d = load_model(args.model)
    batch = load_npz(args.data) if args.data else random_batch(d, args.batch, args.seed)
    if args.data:
        batch = {k: v[:args.batch] for k, v in batch.items()}  # finite differences cost 2 passes an entry
    res = sb.gradcheck(d, batch, tolerance=args.tolerance, max_entries=args.entries, seed=args.seed)
    print(res)
    print("ok" if res.ok else f"FAILED (tolerance {args.tolerance:g})")
    return 0 if res.ok else 1


def cmd_cache(args) -> int:
    from codegen.cython import build

    if args.action == "clear":
        print(f"removed {build.cache_clear()} cached module(s) from {build.cache_dir()}")
        return 0
    info = build.cache_info()
    print(f"cache folder: {info['dir']}")
    for e in info["entries"]:
        print(f"  {e['name']}  {e['bytes'] / 1e6:8.2f} MB{'' if e['valid'] else '  (damaged: rebuilt on next use)'}")
    for t in info["temporary"]:
        state = "left by a killed build: removed by the next build or `symbp cache clear`" if t["stale"] \
            else "a build in progress"
        print(f"  {t['name']}  {t['bytes'] / 1e6:8.2f} MB  ({state})")
    print(f"{len(info['entries'])} module(s), {len(info['temporary'])} temporary build folder(s), "
          f"{info['bytes'] / 1e6:.2f} MB")
    return 0


# -- argument parsing -----------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    """The ``symbp`` argument parser (one subcommand per task)."""
    from codegen.runtime.schedules import add_command_line  # the runtime's: packages declare the same options

    ap = argparse.ArgumentParser(prog="symbp", description="symbp: derive, inspect, build and train neural-network "
                                 "training code from a model file (a .py defining `model` or `build()`).")
    ap.add_argument("--version", action="version", version=f"symbp {sb.__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, fn, help):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("model", help="model file: a .py defining `model` or `build()`")
        p.set_defaults(fn=fn)
        return p

    def training_options(p):
        p.add_argument("--backend", default="numpy", help="code generator (default numpy)")
        p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                       help="default: the float dtype the model's inputs declare, else float32")
        p.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS), help="default adam")
        p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimiser's)")
        p.add_argument("--seed", type=int, default=0, help="initial weights and shuffling (default 0)")

    p = command("equations", cmd_equations, "print the derived gradient equations")
    p.add_argument("--latex", action="store_true", help="LaTeX instead of text")
    p = command("explain", cmd_explain, "what one training step costs, before compiling: FLOPs (forward, backward, "
                "update), parameters, the step's buffers, the costliest ops, memory saved by recurrences")
    p.add_argument("--batch", type=int, required=True, help="examples per step")
    p.add_argument("--optimizer", default=None, choices=sorted(OPTIMIZERS), help="the update (default sgd)")
    p.set_defaults(lr=None)  # the rate does not change what a step costs
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="default: the float dtype the model's inputs declare, else float32")
    p.add_argument("--json", action="store_true", help="the figures as JSON (Explanation.data)")
    p = command("graph", cmd_graph, "the forward (and backward) graph as Graphviz DOT or SVG")
    p.add_argument("--format", choices=["dot", "svg"], default="dot", help="svg needs Graphviz's `dot` program")
    p.add_argument("--backward", action="store_true", help="include the backward graph")
    p.add_argument("-o", "--output", help="write to FILE instead of standard output")
    p = command("build", cmd_build, "write a standalone training package (never needs symbp: NumPy for the "
                "numpy backend; SciPy too, and a C compiler to install, for cython)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the package to")
    p.add_argument("--name", help="package name (default: the model's name)")
    training_options(p)
    p = command("train", cmd_train, "train the model on a .npz file (one array per input name)")
    p.add_argument("--data", required=True, help=".npz training data")
    p.add_argument("--validation", help=".npz evaluated after each epoch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    add_command_line(p)  # --lr-schedule, --warmup, --patience, --monitor
    p.add_argument("--checkpoint", help="checkpoint file (written atomically)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint")
    p.add_argument("--out", help="where to save the trained weights and optimiser state "
                   "(default: <model name>_trained.npz)")
    p.add_argument("--plot", help="save loss curves to this PNG (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--mpi", action="store_true", help="train on every process of mpiexec together "
                   "(mpiexec -n 4 symbp train ... --mpi; needs mpi4py: pip install \"symbp[mpi]\")")
    training_options(p)
    p = command("gradcheck", cmd_gradcheck, "check derived gradients against central finite differences "
                "(float64)")
    p.add_argument("--data", help=".npz data (default: random data of the declared input shapes)")
    p.add_argument("--batch", type=int, default=4, help="examples to check on (default 4)")
    p.add_argument("--entries", type=int, default=32, help="entries checked per parameter (default 32)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest relative error (default 1e-5)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("cache", help="show or clear the compiled-module cache (Cython backend)",
                       description="show or clear the compiled-module cache (Cython backend); its folder is "
                       "$SYMBP_CACHE_DIR, else $XDG_CACHE_HOME/symbp, else ~/.cache/symbp")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(fn=cmd_cache)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the ``symbp`` command; returns the exit status."""
    from codegen.runtime.distributed import stop_all
    from codegen.runtime.trainer import DataError, NonFiniteLoss

    args = parser().parse_args(argv)
    if getattr(args, "resume", False) and not args.checkpoint:
        parser().error("--resume needs --checkpoint FILE")
    try:
        return args.fn(args)
    except (CliError, SymbpError, DataError, NonFiniteLoss, ImportError) as e:
        print(f"symbp {args.command}: {e}", file=sys.stderr)
        return stop_all(1)  # one rank of several failing: stop them all


if __name__ == "__main__":
    sys.exit(main())
