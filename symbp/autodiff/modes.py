"""Training and inference mode: the graph ``predict`` and ``evaluate`` run.

``step``, ``loss`` and ``gradients`` run the graph as the model built it (training mode).
``predict`` and ``evaluate`` run its *inference form*: every node whose op declares an
``inference`` rewrite in the registry (dropout: its input unchanged) replaced by that
rewrite. The pass is pure and keeps every node that does not change, so a model without
such ops has the very same graph (and generated code) in both modes.
"""

from __future__ import annotations

from symbp.ir import Node, topo_order
from symbp.ops.scan import _backward, substitute
from symbp.registry import opdef


def inference_form(roots: list[Node]) -> list[Node]:
    """The graph of ``roots`` in inference mode.

    Memoised over the DAG and iterative (deep graphs cannot hit the recursion limit); the cell
    of a recurrence is rewritten too, and re-derived only when it changes.

    Args:
        roots: the nodes to compute (None entries are kept as None).
    Returns:
        The same nodes where nothing has an inference rewrite, else their rewritten forms.
    """
    new: dict[int, Node] = {}
    for n in topo_order([r for r in roots if r is not None]):
        ins = [new[i.id] for i in n.inputs]
        m = n
        if n.op == "scan":
            m = _scan(n, ins)
        elif any(a is not b for a, b in zip(ins, n.inputs)):
            m = Node(n.op, ins, n.shape, n.dtype, n.attrs, n.name, n.label)
            m.origin = n.origin
        rewrite = opdef(n.op).inference
        new[n.id] = m if rewrite is None else rewrite(m)
    return [None if r is None else new[r.id] for r in roots]


def _scan(n: Node, ins: list[Node]) -> Node:
    """A scan whose cell is in inference form; captured tensors the rewritten cell no longer
    reads (e.g. a recurrent dropout mask) are dropped, so inference never computes them."""
    cell = n.attrs["cell"]
    fwd = [*cell.carry_out, *cell.ys]
    rewritten = inference_form(fwd)
    if all(a is b for a, b in zip(rewritten, fwd)):
        if all(a is b for a, b in zip(ins, n.inputs)):
            return n
        m = Node(n.op, ins, n.shape, n.dtype, n.attrs, n.name, n.label)
        m.origin = n.origin
        return m
    used = {u.id for u in topo_order(rewritten)}
    keep = [k for k, c in enumerate(cell.captured) if c.id in used]
    # Placeholders are numbered by position: the kept ones are renumbered.
    captured = tuple(Node("input", (), c.shape, c.dtype, {**c.attrs, "role": ("captured", j)}, label=c.label)
                     for j, c in enumerate(cell.captured[k] for k in keep))
    rewritten = substitute(rewritten, {cell.captured[k].id: c for k, c in zip(keep, captured)})
    nc = len(cell.carry_out)
    new_cell = _backward(cell.carry_in, cell.xs_in, captured, tuple(rewritten[:nc]), tuple(rewritten[nc:]))
    lead = len(cell.xs_in) + len(cell.carry_in)
    inputs = [*ins[:lead], *(ins[lead + k] for k in keep)]
    m = Node(n.op, inputs, n.shape, n.dtype, {**n.attrs, "cell": new_cell}, n.name, n.label)
    m.origin = n.origin
    return m
