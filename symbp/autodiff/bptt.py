"""Unrolled backpropagation through time: the cell copied T times into one DAG.

This is the meaning of a scan's gradient, written out: the cell applied at t = 0..T-1 with
shared weights, so the chain rule sums each weight's gradient over t. Compiled code never
uses it (it grows with T); the tests use it as the oracle for the rolled loops, and it shows
the BPTT equations step by step.

Truncation (k1, k2) unrolls one chain per chunk of k1 steps (the last chunk may be shorter):
the chain starts at the chunk's window (``window_start``) from a stop-gradient copy of the
carry, and only that chunk's per-step outputs (and, for the last chunk, the final carry) read
from it. Values are unchanged; only gradients are cut.
"""

from __future__ import annotations

from symbp.ir import Node, topo_order
from symbp.ops import structural as St
from symbp.ops.indexing import getitem
from symbp.ops.scan import Cell, substitute


def window_start(lo: int, hi: int, k1: int, k2: int) -> int:
    """The first step the backward of the truncation chunk [lo, hi] reaches.

    The window is the chunk's last k2 steps, but never more than k2 - k1 steps before the
    chunk's start: with k2 >= k1 it starts at lo - (k2 - k1) whatever the chunk's length, so
    (k, k) is PyTorch's detach-every-k for every T (a short last chunk does not reach into
    the chunk before it); with k2 < k1 it is the chunk's last k2 steps (all of a shorter last
    chunk), and errors of the chunk's earlier steps are dropped.

    Args:
        lo, hi: the chunk's first and last step (hi - lo + 1 <= k1).
        k1, k2: the truncation (every k1 steps, back k2 steps).
    Returns:
        The window's first step, in [0, hi].
    """
    return max(0, lo - max(k2 - k1, 0), hi + 1 - k2)


def apply_cell(cell: Cell, carries: list, xs: list, captured: tuple) -> tuple[list, list]:
    """One copy of the cell's forward graph on the given tensors: (carries out, ys)."""
    mapping = {p.id: v for p, v in zip(cell.carry_in, carries)}
    mapping.update({p.id: v for p, v in zip(cell.xs_in, xs)})
    mapping.update({p.id: v for p, v in zip(cell.captured, captured)})
    out = substitute([*cell.carry_out, *cell.ys], mapping)
    return out[:len(cell.carry_out)], out[len(cell.carry_out):]


def unroll_scan(scan: Node) -> list[Node]:
    """The scan's results computed by T copies of its cell: final carries, then stacked ys."""
    cell: Cell = scan.attrs["cell"]
    T = scan.attrs["length"]
    nx, nc = len(cell.xs_in), len(cell.carry_in)
    xs, init, captured = scan.inputs[:nx], list(scan.inputs[nx:nx + nc]), scan.inputs[nx + nc:]
    x_at = [[getitem(x, (slice(None), t)) for x in xs] for t in range(T)]  # x[:, t]
    # The plain chain: every value of the loop, t = 0..T-1.
    base_c, base_y, c = [], [], init
    for t in range(T):
        c, y = apply_cell(cell, c, x_at[t], captured)
        base_c.append(c)
        base_y.append(y)
    if scan.attrs["truncate"] is None:
        ys, final = base_y, base_c[-1]
    else:
        k1, k2 = scan.attrs["truncate"]
        ys = [[St.stop_gradient(v) for v in base_y[t]] for t in range(T)]
        for lo in range(0, T, k1):
            hi = min(lo + k1, T) - 1
            w = window_start(lo, hi, k1, k2)
            c = init if w == 0 else [St.stop_gradient(v) for v in base_c[w - 1]]
            for t in range(w, hi + 1):
                c, y = apply_cell(cell, c, x_at[t], captured)
                if t >= lo:
                    ys[t] = y
            final = c
    stacked = [St.concat([St.expand_dims(ys[t][j], (1,)) for t in range(T)], axis=1) for j in range(len(cell.ys))]
    return [*final, *stacked]


def unroll(model):
    """A copy of ``model`` (same inputs and parameters) with every scan unrolled.

    Args:
        model: a ``symbp.Model`` with its loss set.
    Returns:
        A Model whose loss and outputs compute the same values through unrolled cells;
        ``sb.derive`` of it is the unrolled BPTT derivation.
    """
    from symbp.model import Model

    roots = [model.loss, *model.outputs.values()]
    memo: dict[int, list[Node]] = {}
    mapping: dict[int, Node] = {}
    for n in topo_order(roots):
        if n.op == "scan_out" and n.inputs[0].op == "scan":
            s = n.inputs[0]
            if s.id not in memo:
                memo[s.id] = unroll_scan(s)
            if n.attrs["index"] < len(memo[s.id]):
                mapping[n.id] = memo[s.id][n.attrs["index"]]
    new = substitute(roots, mapping)
    out = Model(model.name + "_unrolled")
    out.inputs, out.params = dict(model.inputs), dict(model.params)
    out.float_dtypes = dict(model.float_dtypes)
    out.loss = new[0]
    out.outputs = dict(zip(model.outputs, new[1:]))
    return out
