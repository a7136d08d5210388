"""What one training step will cost, read off the derivation before anything is compiled.

``explain(d, batch)`` counts FLOPs per step (forward, backward, optimiser update) on the graph
the backends emit (``symbp.autodiff.optimise``: shared subexpressions merged, elementwise
chains fused), and sizes the step's buffers with the plan the backends allocate by: the
schedule's liveness (``symbp.autodiff.schedule``), one buffer per reuse class, allocated once
per batch size, views (``VIEW_OPS``) taking none. A recurrence counts its cell T times and
saves its residuals for the backward pass: (T, batch, ...) arrays, so that memory grows with T.
Its reverse loop counts what the backends emit (``symbp.ops.hoist.gradient_products``, read
when explaining as when emitting, so ``SYMBP_HOIST=0`` counts the plain loops): the cell once per
step of each truncation window, without the weight gradients hoisted after the loop, which
count once per step (one product over the T stacked steps) and add their stacked sides.

FLOPs: a product (B, K) @ (K, N) is 2·B·K·N, a convolution 2·(output elements)·kh·kw·C_in,
a reduction one per input element, an elementwise formula one per operation SymPy counts in
it (``count_ops``: exp, tanh and division count one each) per output element; data movement
(slices, gathers, one-hots, concatenations) counts nothing. Every registered op has a rule
in ``FLOPS`` (a test checks it), so a new op cannot be silently counted as free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from symbp.autodiff.modes import inference_form
from symbp.autodiff.optimise import optimise
from symbp.autodiff.schedule import schedule
from symbp.ir import Node, topo_order
from symbp.ops.hoist import gradient_products
from symbp.ops.scan import scan_outputs

VIEW_OPS = frozenset({"transpose", "expand_dims", "broadcast_like", "reshape", "slice", "stop_gradient", "scan_out",
                      "batch_stat"})
"""Ops both backends implement as views of their first input (no buffer; tests compare with theirs)."""
ITEMSIZE = {"float32": 4, "float64": 8}
TOP = 5  # costliest ops listed


def numel(shape: tuple, batch: int) -> int:
    """Elements of ``shape`` with the batch axis (None) at ``batch``."""
    return math.prod(batch if d is None else d for d in shape)


def _dot(n: Node, b: int) -> int:
    x = n.inputs[0]
    k = numel(x.shape[:-1], b) if n.attrs["ta"] else x.shape[-1]  # xᵀ @ y contracts every leading axis
    return 2 * numel(n.shape, b) * k


def _einsum(n: Node, b: int) -> int:
    spec = n.attrs["spec"].replace(" ", "")
    ins = spec.split("->")[0].split(",")
    size = {}
    for sub, x in zip(ins, n.inputs):
        size.update({c: (b if d is None else d) for c, d in zip(sub, x.shape)})
    return 2 * math.prod(size.values())


def _conv(n: Node, b: int) -> int:
    """2 · (elements of the (B, Ho, Wo, C_out) side) · kh · kw · C_in, for the op and both its gradients."""
    if n.op == "conv2d":
        out, kernel = n, n.inputs[1].shape
    elif n.op == "conv2d_input_grad":
        out, kernel = n.inputs[0], n.inputs[1].shape
    else:  # conv2d_weight_grad: (x, g) -> the kernel's shape
        out, kernel = n.inputs[1], n.shape
    return 2 * numel(out.shape, b) * kernel[0] * kernel[1] * kernel[2]


def _pool(n: Node, b: int) -> int:
    return numel(n.shape, b) * math.prod(n.attrs["window"])


def _each_in(n: Node, b: int) -> int:
    return numel(n.inputs[0].shape, b)


def _each_out(n: Node, b: int) -> int:
    return numel(n.shape, b)


def _free(n: Node, b: int) -> int:
    return 0


def _scan(n: Node, b: int) -> dict:
    return _times(n.attrs["length"], graph_flops(n.attrs["cell"].forward_roots(), b))


def _scan_bwd(n: Node, b: int) -> dict:
    T = n.attrs["length"]
    out = _times(backward_steps(T, n.attrs["truncate"]), graph_flops(_bwd_roots(n), b))
    # each hoisted weight gradient: one product over the T stacked steps (K = T*B) after the loop,
    # however often overlapping truncation windows ran the cell
    out["products"] += T * sum(_dot(r, b) for r, _ in _hoisted(n).values())
    return out


def _times(k: int, kinds: dict) -> dict:
    return {kind: k * f for kind, f in kinds.items()}


def _wanted(n: Node) -> list:
    """The reverse step's cotangent of each input of a ``scan_bwd`` (None where ``need`` says no)."""
    cell, need = n.attrs["cell"], n.attrs["need"]
    return [r if need[k] else None for k, r in enumerate((*cell.d_xs, *cell.d_carry_in, *cell.d_captured))]


def _hoisted(n: Node) -> dict:
    """The weight gradients a reverse loop computes after the loop, as ``codegen``'s loops choose
    them (``gradient_products``; none when ``SYMBP_HOIST=0``): {captured index: (product, side)}."""
    cell = n.attrs["cell"]
    return gradient_products(cell, _wanted(n)[len(cell.xs_in) + len(cell.carry_in):])


def _bwd_roots(n: Node) -> list:
    """What a reverse loop's cell computes: the carries' cotangents, those of the inputs that
    want one (``need``) but are not hoisted after the loop, dL/dh_t, and both sides of each
    hoisted product (as ``codegen``'s loops emit it)."""
    cell = n.attrs["cell"]
    nx, nc = len(cell.xs_in), len(cell.carry_in)
    wanted, hoisted = _wanted(n), _hoisted(n)
    cap = [None if j in hoisted else r for j, r in enumerate(wanted[nx + nc:])]
    pairs = [i for j in sorted(hoisted) for i in hoisted[j][0].inputs]
    return [*cell.d_carry_in, *wanted[:nx], *cap, *cell.d_h, *pairs]


def backward_steps(T: int, truncate: tuple | None) -> int:
    """How many times a reverse loop runs its cell: T, or more when truncated windows overlap
    (the loop the backends emit: chunks of k1 steps, each reaching back k2)."""
    if truncate is None:
        return T
    k1, k2 = truncate
    steps = 0
    for j in range(-(-T // k1)):
        lo, hi = j * k1, min(j * k1 + k1, T) - 1
        steps += hi - max(0, lo - max(k2 - k1, 0), hi - (k2 - 1)) + 1
    return steps


FLOPS = {
    "dot": _dot, "einsum": _einsum,
    "conv2d": _conv, "conv2d_input_grad": _conv, "conv2d_weight_grad": _conv,
    "max_pool2d": _pool, "avg_pool2d": _pool,
    "max_pool2d_grad": _each_out, "avg_pool2d_grad": _each_out, "max_pool2d_select": _each_out,
    "sum": _each_in, "max": _each_in, "argmax": _each_in, "scatter_add": _each_in,
    "scan": _scan, "scan_bwd": _scan_bwd,
    "dropout_mask": _each_out,  # one random word compared with the threshold per element
    "ctc_labels": _each_in,  # a range check of each label
    **dict.fromkeys(("input", "param", "const", "size", "onehot", "gather", "concat", "slice", "unslice",
                     "transpose", "reshape", "expand_dims", "broadcast_like", "stop_gradient", "scan_out",
                     "scan_cot", "buffer", "batch_stat"), _free),
}
"""Op -> FLOPs of one node at a batch size; elementwise ops are counted from their formula."""


PRODUCTS = frozenset({"dot", "einsum", "conv2d", "conv2d_input_grad", "conv2d_weight_grad"})
KINDS = ("products", "elementwise", "other")
"""FLOPs are tallied by kind: matrix products and convolutions (what BLAS-like kernels run),
elementwise formulas, and the rest (reductions, pooling)."""


def node_flops(n: Node, b: int) -> dict:
    """FLOPs of one node at batch size ``b``, by kind (a loop's are its cell's, times its steps)."""
    if "expr" in n.attrs:
        import sympy as sp  # only here: explaining a model is when its formulas are read

        return {"elementwise": int(sp.count_ops(n.attrs["expr"])) * numel(n.shape, b)}
    f = FLOPS[n.op](n, b)
    return f if isinstance(f, dict) else {"products" if n.op in PRODUCTS else "other": f}


def graph_flops(roots: list, b: int) -> dict:
    """FLOPs by kind of computing ``roots`` (optimised as the backends emit them) once."""
    out = dict.fromkeys(KINDS, 0)
    live = [r for r in roots if r is not None]
    for n in topo_order(optimise(live)) if live else ():
        for kind, f in node_flops(n, b).items():
            out[kind] += f
    return out


def buffer_bytes(roots: list[Node], b: int, itemsize: int) -> int:
    """Bytes of the buffers the backends allocate for computing ``roots`` at batch size ``b``:
    the schedule's reuse plan, then each loop's own arrays (its results, the residuals saved
    for the backward pass, two buffers per carry, and its cell's buffers)."""
    sched = schedule(roots, VIEW_OPS)
    total = sum(_bytes(shape, dtype, b, itemsize) for shape, dtype in sched.buffers)
    for n in sched.order:
        if n.op == "scan":
            total += _scan_bytes(n, b, itemsize)
        elif n.op == "scan_bwd":
            total += _scan_bwd_bytes(n, b, itemsize)
    return total


def _bytes(shape: tuple, dtype: str, b: int, itemsize: int) -> int:
    return numel(shape, b) * (8 if dtype == "int64" else itemsize)


def _cell_bytes(roots: list, b: int, itemsize: int) -> int:
    live = [r for r in roots if r is not None]
    return buffer_bytes(optimise(live), b, itemsize) if live else 0


def _scan_bytes(n: Node, b: int, itemsize: int) -> int:
    cell = n.attrs["cell"]
    outs = sum(_bytes(s, dt, b, itemsize) for s, dt in scan_outputs(cell, n.attrs["length"]))
    carries = 2 * sum(_bytes(c.shape, c.dtype, b, itemsize) for c in cell.carry_in)
    return outs + carries + _cell_bytes(cell.forward_roots(), b, itemsize)


def _scan_bwd_bytes(n: Node, b: int, itemsize: int) -> int:
    cell, need = n.attrs["cell"], n.attrs["need"]
    nin = len(cell.xs_in) + len(cell.carry_in) + len(cell.captured)
    # an input that wants no cotangent keeps a one-element placeholder in the loop's results
    cots = sum(_bytes(i.shape if need[k] else (), "float", b, itemsize) for k, i in enumerate(n.inputs[:nin]))
    carries = 2 * sum(_bytes(c.shape, "float", b, itemsize) for c in cell.carry_in)
    # truncated, the loop copies dL/dy_t into a buffer per output (zero in a window's look-back)
    if n.attrs["truncate"] is not None:
        carries += sum(_bytes(y.shape, "float", b, itemsize) for y in cell.ys)
    T = n.attrs["length"]
    norms = T * itemsize  # |dL/dh_t| for every t
    # a hoisted product's sides stacked over t, (T, batch, ...), but for one the forward loop saved
    stacks = sum(T * _bytes(i.shape, "float", b, itemsize) for r, _ in _hoisted(n).values() for i in r.inputs
                 if not (i.op == "input" and i.attrs.get("role", ("",))[0] == "saved"))
    return cots + carries + norms + stacks + _cell_bytes(_bwd_roots(n), b, itemsize)


@dataclass
class Explanation:
    """The cost of one training step: print it for a table, ``.data`` for a dict."""

    data: dict

    def __str__(self) -> str:
        return table(self.data)

    def _repr_pretty_(self, p, cycle):  # IPython prints the table, not the dataclass
        p.text(str(self))


def explain(d, batch: int, optimizer=None, dtype: str | None = None) -> Explanation:
    """What one training step of ``d`` costs at batch size ``batch``, without compiling.

    Args:
        d: a ``symbp.Derivation``.
        batch: examples per step.
        optimizer: the ``sb.optim`` optimiser the update runs (default SGD, as ``sb.compile``).
        dtype: "float32"/"float64"; default: the model's, else float32.
    Returns:
        An Explanation. ``.data``: flops {forward, backward, update, total}; flops_by_kind
        {forward, backward: {products, elementwise, other}}; params {count, bytes};
        optimizer_state_bytes; peak_bytes (the step's buffers as the backends allocate them,
        kernel temporaries aside); costliest (ops, largest first); loops (per recurrence:
        saved_bytes_per_step, T, saved_bytes); training: False for a model without a loss,
        whose figures are those of ``predict`` (no backward pass, no update, no loops saved).
    """
    from symbp import optim
    from symbp.ir import SymbpError

    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise SymbpError(f"explain(batch=...) needs a positive int (examples per step), got {batch!r}")
    dtype = dtype or d.dtype or "float32"
    if dtype not in ITEMSIZE:
        raise SymbpError(f"explain(dtype=...): unknown dtype {dtype!r}; choose from {', '.join(ITEMSIZE)}")
    optimizer = optim.check(optimizer if optimizer is not None else optim.SGD(lr=0.01))
    itemsize = ITEMSIZE[dtype]
    training = d.loss is not None
    # a model without a loss compiles predict alone, in inference mode: no dropout, running statistics
    roots = optimise([d.loss, *d.grads.values()] if training else inference_form(list(d.outputs.values())))
    forward = {n.id for n in topo_order(roots[:1] if training else roots)}
    kinds = {"forward": dict.fromkeys(KINDS, 0), "backward": dict.fromkeys(KINDS, 0)}
    ops = []
    for n in topo_order(roots):
        phase = "forward" if n.id in forward else "backward"
        by_kind = node_flops(n, batch)
        for kind, f in by_kind.items():
            kinds[phase][kind] += f
        f = sum(by_kind.values())
        if f:
            ops.append({"op": n.op, "what": _what(n), "phase": phase, "shape": _shape(n.shape, batch), "flops": f})
    update = _update_flops(d, optimizer) if training else 0
    phases = {phase: sum(k.values()) for phase, k in kinds.items()}
    total = phases["forward"] + phases["backward"] + update
    ops.sort(key=lambda o: -o["flops"])
    for o in ops:
        o["share"] = o["flops"] / total if total else 0.0
    count = sum(numel(p.shape, 1) for p in d.params.values())
    return Explanation({
        "model": d.name, "batch": batch, "dtype": dtype, "optimizer": type(optimizer).__name__,
        "flops": {**phases, "update": update, "total": total}, "flops_by_kind": kinds,
        "params": {"count": count, "bytes": count * itemsize},
        "optimizer_state_bytes": len(optimizer.slots) * count * itemsize,
        "peak_bytes": buffer_bytes(roots, batch, itemsize),
        "costliest": ops[:TOP],
        "loops": [_loop(n, batch, itemsize) for n in topo_order(roots) if n.op == "scan"] if training else [],
        "training": training,
    })


def _update_flops(d, optimizer) -> int:
    import sympy as sp

    from symbp.optim import g

    grad = optimizer.gradient()
    per = sum(int(sp.count_ops(rule.xreplace({g: grad}))) for _, rule in optimizer.rules())
    return per * sum(numel(p.shape, 1) for p in d.params.values())


def _loop(n: Node, b: int, itemsize: int) -> dict:
    """A recurrence's memory for the backward pass: its residuals, saved at every step."""
    cell, T = n.attrs["cell"], n.attrs["length"]
    per_step = sum(_bytes(r.shape, r.dtype, b, itemsize) for r in cell.residuals)
    return {"label": n.label, "T": T, "saved_bytes_per_step": per_step, "saved_bytes": per_step * T,
            "residuals": [r.label or r.op for r in cell.residuals]}


def _what(n: Node) -> str:
    """A short reading of a node for the costliest-ops list: its layer or name, and its operands."""
    who = _operand(n) if n.name or n.label else ""
    if n.op in PRODUCTS:
        names = [_operand(i) for i in n.inputs]
        return f"{who}: {' · '.join(names)}" if who and who not in names else " · ".join(names)
    return who


def _operand(n: Node) -> str:
    """A node's name, else its layer, else (a fused formula) its outermost function, else its op."""
    if n.name or n.label:
        return n.name or n.label
    return n.attrs["expr"].func.__name__.lower() if "expr" in n.attrs else n.op


def _shape(shape: tuple, b: int) -> tuple:
    return tuple(b if s is None else s for s in shape)



def si(x: float, unit: str) -> str:
    """``x`` with a decimal prefix: 1.23 MFLOP, 74.3 kB."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def table(data: dict) -> str:
    """The readable form of ``Explanation.data``."""
    f = data["flops"]
    what = f"{data['optimizer']} update" if data.get("training", True) else "no loss: predict only"
    lines = [f"model {data['model']!r}: one {'training step' if data.get('training', True) else 'predict'} at batch "
             f"{data['batch']}, {data['dtype']}, {what}",
             "",
             f"  {'FLOPs':<22}{'forward':>12}{'backward':>12}{'update':>12}{'total':>12}",
             f"  {'':<22}" + "".join(f"{si(f[k], 'FLOP'):>12}" for k in ("forward", "backward", "update", "total")),
             "",
             f"  {'parameters':<22}{data['params']['count']:,} ({si(data['params']['bytes'], 'B')})",
             f"  {'optimiser state':<22}{si(data['optimizer_state_bytes'], 'B')}",
             f"  {'step buffers (peak)':<22}{si(data['peak_bytes'], 'B')}   allocated once per batch size, "
             "reused by liveness"]
    if data["costliest"]:
        lines += ["", f"  {'costliest ops':<30}{'phase':<10}{'shape':<14}{'FLOPs':>12}{'share':>8}"]
        for o in data["costliest"]:
            what = f"{o['op']} {o['what']}".strip()
            what = what if len(what) < 30 else what[:28] + "…"
            shape = "x".join(map(str, o["shape"])) or "()"
            lines.append(f"  {what:<30}{o['phase']:<10}{shape:<14}{si(o['flops'], 'FLOP'):>12}{o['share']:>8.1%}")
    for loop in data["loops"]:
        lines += ["", f"  recurrence {loop['label']!r}: saves {si(loop['saved_bytes_per_step'], 'B')} per step for "
                  f"the backward pass, x T = {loop['T']}: {si(loop['saved_bytes'], 'B')}"
                  f" ({', '.join(loop['residuals'])})"]
    return "\n".join(lines) + "\n"
