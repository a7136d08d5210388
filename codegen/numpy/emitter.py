"""NumPy backend: emits a readable Python module computing loss, gradients and the update.

The module holds straight-line code in schedule order. Every array it writes lives in a
buffer allocated once per batch size (in the caller's workspace, see
``codegen.runtime.trainer.Workspace``) and reused as the schedule's liveness allows; views
(transposes, reshapes, slices, broadcasts) cost nothing. It imports only NumPy.
"""

from __future__ import annotations

import sympy as sp

from codegen.naming import Namer, equation_comment, model_namer
from codegen.numpy import (
    conv,
    loops,  # recurrences: their loops are emitted by their own module
    random,
    sequence,
)
from codegen.numpy.printer import KernelWriter, Scratch, literal, scalar_code
from codegen.spec import LABEL_ERROR, Spec, range_check
from symbp.autodiff.schedule import schedule
from symbp.ir import Node
from symbp.ops import scalar as S

VIEWS = frozenset({"transpose", "expand_dims", "broadcast_like", "reshape", "slice", "stop_gradient", "batch_stat"}) \
    | loops.VIEWS


def _dims(shape: tuple) -> str:
    return "(" + "".join(("B" if d is None else str(d)) + ", " for d in shape).rstrip(" ") + ")"


def _index(index: tuple) -> str:
    parts = []
    for ix in index:
        if isinstance(ix, int):
            parts.append(str(ix))
        elif ix == (0, 0, 1):
            parts.append(":")
        else:
            start, stop, step = ix
            if step < 0 and start < 0:  # slice.indices' form of an empty backward slice
                start, stop, step = 0, 0, 1
            # slice.indices gives stop -1 for a backward slice through element 0; printed,
            # -1 would mean the last element (an empty slice), so the stop is left out.
            stop_text = "" if step < 0 and stop < 0 else str(stop)
            parts.append(f"{start}:{stop_text}" + (f":{step}" if step != 1 else ""))
    return ", ".join(parts) or "..."


# -- one function per structural op: (node, output name, input names) -> code lines ---------

def _dot(n, out, a, b):
    ta, tb = n.attrs["ta"], n.attrs["tb"]
    x, y = n.inputs
    if ta:
        flat = [v if node.ndim == 2 else f"{v}.reshape(-1, {v}.shape[-1])" for v, node in ((a, x), (b, y))]
        return [f"np.matmul({flat[0]}.T, {flat[1]}, out={out})"]
    rhs = f"{b}.T" if tb else b
    if x.ndim > 2:
        return [f"np.matmul({a}.reshape(-1, {a}.shape[-1]), {rhs}, out={out}.reshape(-1, {out}.shape[-1]))"]
    return [f"np.matmul({a}, {rhs}, out={out})"]


def _reduce(fn):
    def emit(n, out, x):
        axes, nd = n.attrs["axes"], n.inputs[0].ndim
        if fn == "sum" and axes == tuple(range(len(axes))) and len(axes) < nd:
            # Summing leading axes (bias gradients) as ones @ x runs in BLAS: NumPy's
            # multi-axis sum is 5-15x slower at these shapes.
            return [f"_x = {x}.reshape(-1, {out}.size)",
                    f"np.matmul(_ones(_mem, _x.shape[0]), _x, out={out}.reshape(-1))"]
        return [f"np.{fn}({x}, axis={axes}, keepdims={n.attrs['keepdims']}, out={out})"]
    return emit


def _size(n, out, x):
    dims = [f"{x}.shape[{a}]" if n.inputs[0].shape[a] is None else str(n.inputs[0].shape[a])
            for a in n.attrs["axes"]]
    return [f"{out}[...] = {' * '.join(dims)}"]


def _onehot(n, out, y):
    # Labels are checked here, where they are read: the runtime checks only inputs that are
    # labels themselves, not labels concatenated or read inside a loop. Negative labels wrap
    # past any class count as uint64, so one reduction checks both ends.
    depth = n.attrs["depth"]
    labels, _, *rest = range_check(n)
    return [f"if {y}.view(np.uint64).max() >= {depth}:",
            f"    _bad_label({labels!r}, {depth}, {y}[({y} < 0) | ({y} >= {depth})].flat[0]"
            + "".join(f", {a!r}" for a in rest) + ")",
            f"{out}.fill(0.0)", f"np.put_along_axis({out}, {y}[..., None], 1.0, axis=-1)"]


EMIT = {
    "dot": _dot,
    "sum": _reduce("sum"),
    "max": _reduce("max"),
    "size": _size,
    "const": lambda n, out: [f"{out}.fill({literal(n.attrs['value'])})"],
    "unslice": lambda n, out, g: [f"{out}.fill(0.0)", f"{out}[{_index(n.attrs['index'])}] = {g}"],
    "concat": lambda n, out, *xs: [f"np.concatenate(({', '.join(xs)},), axis={n.attrs['axis']}, out={out})"],
    "onehot": _onehot,
    # views: the result is an expression over the input, bound to a name
    "transpose": lambda n, x: f"np.transpose({x}, {n.attrs['perm']})",
    "expand_dims": lambda n, x: f"np.expand_dims({x}, {n.attrs['axes']})",
    "broadcast_like": lambda n, g: (f"np.broadcast_to(np.expand_dims({g}, {n.attrs['axes']}), {_dims(n.shape)})"
                                         if n.attrs["axes"] else f"np.broadcast_to({g}, {_dims(n.shape)})"),
    "reshape": lambda n, x: f"{x}.reshape({_dims(tuple(-1 if d is None else d for d in n.shape))})",
    "slice": lambda n, x: f"{x}[{_index(n.attrs['index'])}]",
    "stop_gradient": lambda n, x: x,
    "batch_stat": lambda n, x, running: x,  # the training form; inference mode reads the running value
    **loops.EMIT,
}
EMIT.update(conv.EMIT)
EMIT.update(sequence.EMIT)
EMIT.update(random.EMIT)


class Function:
    """One emitted function: its schedule, buffer list and body lines."""

    def __init__(self, name: str, roots: list[Node], namer: Namer, scratch: Scratch, equations=None):
        self.name = name
        self.sched = schedule(roots, VIEWS)
        self.namer = namer
        self.scratch = scratch
        self.equations = equations
        self.body: list[str] = []

    def compile_body(self) -> None:
        name = self.namer
        shown: set = set()
        for n in self.sched.order:
            out = name(n)
            ins = [name(i) for i in n.inputs]
            if self.equations is not None:
                self.body += ["# " + c for c in equation_comment(self.equations, n, shown)]
            if n.op in VIEWS:
                self.body.append(f"{out} = {EMIT[n.op](n, *ins)}")
                continue
            self.body.append(f"{out} = _b[{self.sched.buffer_of[n.id]}]")
            if "expr" in n.attrs:
                env = {x: (nm, i.shape) for x, nm, i in zip(S.symbols(len(ins)), ins, n.inputs)}
                self.body += KernelWriter(env, self.scratch, self.namer.temp).write(n.attrs["expr"], out)
            else:
                self.body += EMIT[n.op](n, out, *ins)


def emit(spec: Spec) -> str:
    """The NumPy module for ``spec`` (see ``codegen.spec``)."""
    d = spec.derivation
    pnames = list(d.params)
    loss, grads, outs, updates = spec.roots()
    namer, eqs = model_namer(d)
    scratch = Scratch()
    fns = [Function("gradients", [loss, *grads, *updates], namer, scratch, eqs),
           Function("loss", [loss], namer, scratch, eqs)] if spec.trains else []  # else inference only
    if outs:
        fns.append(Function("predict", outs, namer, scratch, eqs))
    evaluate = spec.evaluate_root()  # None: the training loss serves evaluate (the runtime's fallback)
    if evaluate is not None:
        fns.append(Function("evaluate", [evaluate], namer, scratch))  # the equations show training mode
    for f in fns:
        f.compile_body()
    lines = [*spec.header("NumPy"), "import math", "", "import numpy as np", "", *spec.constants(), ""]
    lines += ["", "def _alloc(shapes, B):",
              "    return [np.empty(tuple(B if d is None else d for d in s),",
              "                     dtype=DTYPE if k == 'float' else np.int64) for s, k in shapes]", ""]
    if any("_bad_label(" in line for f in fns for line in f.body):
        lines += LABEL_ERROR.splitlines()
    if any("_dropout_mask(" in line for f in fns for line in f.body):
        lines += random.HELPER.splitlines()
    lines.append(f"_SCRATCH = {[(s, 'float') for _, s in scratch.specs()]!r}")
    # Buffers live in the caller's workspace (the last argument, ``_ws``: the runtime's
    # Workspace), in its table for the call's batch size (``_mem``), never in this module:
    # a module is shared by every trainer of its model, and trainers may run in threads.
    lines += ["", "", "def _ones(_mem, n):",
              "    if ('ones', n) not in _mem:",
              "        _mem['ones', n] = np.ones(n, dtype=DTYPE)",
              "    return _mem['ones', n]"]
    lines += ["", "", "def _buffers(_mem, fn, shapes, B):",
              "    if fn not in _mem:",
              "        _mem[fn] = (_alloc(shapes, B), _alloc(_SCRATCH, B))",
              "    return _mem[fn]", ""]
    results = {"gradients": (loss, dict(zip(pnames, grads)), dict(zip(d.updates, updates))),
               "loss": (loss, None, {}), "predict": (None, dict(zip(d.outputs, outs)), {}),
               "evaluate": (evaluate, None, {})}
    for f in fns:
        lines += ["", f"_{f.name.upper()} = {f.sched.buffers!r}", "", ""]
        lines += _function(f, namer, scratch, d, results[f.name], spec)
    if spec.trains:
        lines += _step(spec, namer, pnames)
    return "\n".join(lines) + "\n"


_DOCS = {
    "gradients": "Forward and backward pass: returns (loss, {parameter: gradient}).",
    "loss": "Forward pass only: returns the loss.",
    "predict": "Forward pass to the named outputs: returns {output: array}.",
    "evaluate": "Forward pass in inference mode (no dropout): returns the loss.",
}


_SOURCES = {"input": "D", "param": "P", "buffer": "_ws.running"}
"""Where a function reads each kind of leaf: data, parameters, the trainer's buffers."""


def _function(f: Function, namer: Namer, scratch: Scratch, d, result, spec: Spec) -> list[str]:
    lines = [f"def {f.name}(P, D, _ws):", f'    """{_DOCS[f.name]}"""']
    read_inputs = [n for n in f.sched.leaves if n.op == "input"]
    for n in f.sched.leaves:
        src = _SOURCES[n.op]
        lines.append(f"    {namer(n)} = {src}[{n.name!r}]")
    batch_src = next((namer(n) for n in read_inputs if n.shape[:1] == (None,)), None)
    lines.append(f"    B = {batch_src}.shape[0]" if batch_src else "    B = 1")
    lines.append("    _mem = _ws.buffers(B)")
    lines.append(f"    _b, _s = _buffers(_mem, {f.name!r}, _{f.name.upper()}, B)")
    names = [n for n, _ in scratch.specs()]
    if names:
        lines.append(f"    {', '.join(names)}, = _s")
    lines += ["    " + line for line in f.body]
    loss, table, updates = result
    # the buffers' new values, for ``step``: the runtime puts the old ones back after any other call
    lines += [f"    _ws.running[{k!r}] = {namer(v)}" for k, v in updates.items()]
    if f.name == "gradients":
        grads = ", ".join(f"{k!r}: {namer(v)}" for k, v in table.items())
        lines.append(f"    return float({namer(loss)}), {{{grads}}}")
    elif f.name in ("loss", "evaluate"):
        lines.append(f"    return float({namer(loss)})")
    else:
        lines.append(f"    return {{{', '.join(f'{k!r}: {namer(v)}' for k, v in table.items())}}}")
    return lines + ["", ""]


def _step(spec: Spec, namer: Namer, pnames: list[str]) -> list[str]:
    opt = spec.optimizer
    # step = gradients, then update: two functions, so that a distributed trainer can reduce
    # the gradients over its processes in between (codegen/runtime/distributed.py)
    lines = ["def step(P, S, D, H, t, _ws):",
             '    """One training step: gradients, then the optimiser update in place. Returns the loss;',
             '    when the loss is not finite the parameters are left untouched."""',
             "    loss, G = gradients(P, D, _ws)",
             "    if math.isfinite(loss):",
             "        update(P, S, G, H, t, _ws)",
             "    return loss", "", "",
             "def update(P, S, G, H, t, _ws):",
             '    """The optimiser update of the parameters P and the state S, in place, from the gradients G."""']
    for k in sorted(opt.hyper):
        lines.append(f"    {k} = H[{k!r}]")
    gexpr = opt.gradient()
    from symbp.optim import GNORM, g, p, t  # noqa: F401 - the rule symbols

    if gexpr.has(GNORM):
        clipped = "v" if opt.clip_value is None else f"np.clip(v, {-opt.clip_value!r}, {opt.clip_value!r})"
        lines.append(f"    gnorm = math.sqrt(sum(float(np.vdot(c, c)) for c in ({clipped} for v in G.values())))")
    for sym, formula in opt.scalars():
        lines.append(f"    {sym} = {scalar_code(formula)}")
    scratch = Scratch()
    temps = Namer(reserved=["p", "g", "gnorm", "t", *opt.hyper, *opt.slots, *(str(s) for s, _ in opt.scalars())])
    body = []
    scalars_env = {sp.Symbol(k, real=True): (k, None) for k in opt.hyper}
    scalars_env.update({s: (str(s), None) for s, _ in opt.scalars()})
    scalars_env[GNORM] = ("gnorm", None)
    scalars_env[t] = ("t", None)
    for name in pnames:
        shape = spec.derivation.params[name].shape
        body.append(f"p, g = P[{name!r}], G[{name!r}]" + "".join(f"; {s} = S[{s!r}][{name!r}]" for s in opt.slots))
        env = dict(scalars_env)
        env[p] = ("p", shape)
        env[g] = ("g", shape)
        for s in opt.slots:
            env[sp.Symbol(s, real=True)] = (s, shape)
        for target, rule in opt.rules():
            body += KernelWriter(env, scratch, temps.temp).write(rule.xreplace({g: gexpr}), target)
    specs = scratch.specs()
    if specs:
        lines.append(f"    {', '.join(n for n, _ in specs)}, = _update_scratch(_ws.fixed)")
    lines += ["    " + b for b in body]
    lines += [""]
    if specs:
        lines += ["", "", "def _update_scratch(_mem):",
                  "    if 'update' not in _mem:",
                  f"        _mem['update'] = [np.empty(s, dtype=DTYPE) for s in {[s for _, s in specs]!r}]",
                  "    return _mem['update']", ""]
    return lines
