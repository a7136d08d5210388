"""Loop-invariant hoisting: a scan step's products that do not read the carry run once, before the loop.

In a step like ``tanh(x_t @ Wx + h @ Wh + b)`` the product ``x_t @ Wx`` does not depend on the
carry: its T values are one product over all T*B rows of the sequence, ``xs @ Wx`` of shape
(B, T, K), computed before the loop. The traced step then reads that product's row t as one more
per-step input instead. Nothing here knows a cell type: which nodes move is read off the traced
graph (what depends on the carry, what on x_t, what broadcasts over a time axis).

The backward follows for free: the outer graph's vector-Jacobian rule of ``xs @ Wx`` gives the
weight gradient as one product contracting the B and T axes (K = T*B rows) and dx as one product,
after the reverse loop, from the per-step cotangents the loop stores for the new input. Masks,
truncation, stateful carries, go_backwards and initial states only change what the loop does
with the carry, which the hoisted products never read, so values and gradients are the same.

The reverse loop's own sums over t, a weight's gradient sum_t a_t^T b_t of two per-step values
(h_{t-1}^T dz_t for ``h @ Wh``), become one product over the stacked steps after that loop:
``gradient_products`` says which, each backend's loop emitter stacks them.

``SYMBP_HOIST=0`` in the environment turns both off (read when the step is traced and when the
loops are emitted), to compare the two forms or to profile the plain loops.
"""

from __future__ import annotations

import os

from symbp.ir import Node, broadcast_shapes, topo_order
from symbp.registry import opdef


def enabled() -> bool:
    """Whether scans hoist their carry-independent products (``$SYMBP_HOIST`` is not "0")."""
    return os.environ.get("SYMBP_HOIST", "1").strip() not in ("0", "false", "no", "off")


def hoist(roots: list[Node], carry_in: tuple, xs_in: tuple, xs: tuple, start: int, placeholder) -> tuple:
    """Move the step's carry-independent products out of the loop.

    Args:
        roots: the step's results (carries out, then y_t), as traced: outer tensors not yet captured.
        carry_in, xs_in: the step's carry and x_t placeholders.
        xs: the outer sequences (B, T, ...) that ``xs_in`` stand for.
        start: nodes with a smaller id were made before the step was traced (outer tensors).
        placeholder: ``symbp.ops.scan.placeholder`` (passed in: that module imports this one).
    Returns:
        (new roots, the x_t placeholders the loop reads: those of ``xs`` still read, then one per
        hoisted value; the outer (B, T, ...) tensors they stand for; (placeholder, the step's
        value it replaces) per hoisted value, for the equations).
    """
    carry_ids = {p.id for p in carry_in}
    x_ids = {p.id: k for k, p in enumerate(xs_in)}
    order = topo_order(roots)
    carry_dep: set[int] = set()   # reads a carry
    x_dep: set[int] = set()       # reads an x_t
    seq_ok: set[int] = set()      # can be computed for all steps at once, time folded in as an axis
    has_dot: set[int] = set()     # a product among its ancestors in seq_ok
    for n in order:
        if n.id in carry_ids or any(i.id in carry_dep for i in n.inputs):
            carry_dep.add(n.id)
            continue
        if n.id in x_ids:
            x_dep.add(n.id)
            if n.dtype == "float":
                seq_ok.add(n.id)
            continue
        if not any(i.id in x_dep for i in n.inputs):
            continue  # loop-invariant (a weight, a transposed weight): read as it is
        x_dep.add(n.id)
        if _row_wise(n, seq_ok, x_dep):
            seq_ok.add(n.id)
            if n.op == "dot" or any(i.id in has_dot for i in n.inputs):
                has_dot.add(n.id)
    # The frontier: the largest such values that the carry-dependent part (or the result) reads.
    frontier: dict[int, Node] = {}
    for n in order:
        readers = [i for i in n.inputs if i.id in has_dot]
        if n.id not in has_dot:
            frontier.update((i.id, i) for i in readers)
    frontier.update((r.id, r) for r in roots if r.id in has_dot)
    if not frontier:
        return roots, xs_in, xs, ()
    memo: dict[int, Node] = {}
    new_in, new_seq, mapping = [], [], {}
    for k, n in enumerate(frontier[i] for i in sorted(frontier)):
        seq = _over_time(n, xs, x_ids, x_dep, memo)
        p = placeholder(n.shape, "float", ("x", len(xs_in) + k), f"u{k}")
        new_in.append(p)
        new_seq.append(seq)
        mapping[n.id] = p
    from symbp.ops.scan import substitute  # same stage; scan imports this module at its top

    roots = substitute(roots, mapping)
    # An x_t that only fed hoisted products leaves the loop (its cotangent comes from theirs).
    read = {n.id for n in topo_order(roots)}
    keep = [k for k, p in enumerate(xs_in) if p.id in read]
    shown = tuple(zip(new_in, (frontier[i] for i in sorted(frontier))))
    return roots, (*(xs_in[k] for k in keep), *new_in), (*(xs[k] for k in keep), *new_seq), shown


def _row_wise(n: Node, seq_ok: set[int], x_dep: set[int]) -> bool:
    """Whether ``n`` computes each batch row from that row alone, so the same op over a
    (B, T, ...) sequence gives every step's value: an elementwise op or a product ``a @ W``
    whose x-dependent inputs are all such values and whose other inputs hold no batch axis."""
    for i in n.inputs:
        if i.id in x_dep:
            if i.id not in seq_ok:
                return False
        elif None in i.shape:  # a per-example tensor from outside the step has no time axis
            return False
    if n.op == "dot":
        a, b = n.inputs
        return not n.attrs["ta"] and a.id in x_dep and b.id not in x_dep and a.shape[:1] == (None,)
    return opdef(n.op).kind == "elementwise" and "expr" in n.attrs


def _over_time(n: Node, xs: tuple, x_ids: dict[int, int], x_dep: set[int], memo: dict[int, Node]) -> Node:
    """``n`` rebuilt over the whole sequences: x_t becomes x, so (B, ...) values become (B, T, ...)."""
    for v in topo_order([n]):
        if v.id in memo or v.id not in x_dep:
            continue
        if v.id in x_ids:
            memo[v.id] = xs[x_ids[v.id]]
            continue
        ins = [memo.get(i.id, i) for i in v.inputs]
        if v.op == "dot":
            shape = ins[0].shape[:-1] + v.shape[-1:]
        else:
            shape = broadcast_shapes([i.shape for i in ins], f"op {v.op!r}")
        memo[v.id] = Node(v.op, ins, shape, v.dtype, v.attrs, v.name, v.label)
    return memo[n.id]


def gradient_products(cell, d_captured: list) -> dict[int, tuple[Node, int]]:
    """The weight gradients of a reverse step that are one product ``a^T b`` of two per-step values.

    Summed over t, such a gradient is one product over the stacked steps (k = T*B rows) after the
    reverse loop instead of T products with k = B inside it; backends stack ``a`` and ``b``.

    Args:
        cell: the scan's ``symbp.ops.scan.Cell``.
        d_captured: the reverse step's cotangent of each captured input (None: not wanted).
    Returns:
        {index in d_captured: (the product node, which of its two inputs carries the cotangent)}.
    """
    out: dict[int, tuple[Node, int]] = {}
    if not enabled():
        return out
    for j, r in enumerate(d_captured):
        if r is None or r.op != "dot" or not r.attrs["ta"] or r.attrs["tb"]:
            continue
        roles = [{v.attrs["role"][0] for v in topo_order([i]) if v.op == "input" and "role" in v.attrs}
                 for i in r.inputs]
        per_step = [bool(s - {"captured"}) for s in roles]
        cot = [bool(s & {"d_carry", "d_y"}) for s in roles]
        if all(per_step) and sum(cot) == 1:
            out[j] = (r, cot.index(True))
    return out
