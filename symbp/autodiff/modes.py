"""Training and inference mode: the graph ``predict`` and ``evaluate`` run.

``step``, ``loss`` and ``gradients`` run the graph as the model built it (training mode),
with each random op told which stream of numbers it draws (``training_form``).
``predict`` and ``evaluate`` run its *inference form*: every node whose op declares an
``inference`` rewrite in the registry (dropout: its input unchanged) replaced by that
rewrite. Both passes are pure and keep every node that does not change, so a model without
such ops has the very same graph (and generated code) in both modes.
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, topo_order
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
    def inference(n: Node, ins: list[Node]) -> Node:
        m = _scan(n, ins) if n.op == "scan" else _with_inputs(n, ins)
        rewrite = opdef(n.op).inference
        return m if rewrite is None else rewrite(m)

    return _rewrite(roots, inference)


def training_form(roots: list[Node]) -> list[Node]:
    """The graph of ``roots`` in training mode: each dropout mask numbered with its stream of
    random numbers (``attrs["stream"]``), in order of creation, so the same model script
    draws the same numbers on every run and two masks never share theirs
    (``symbp.ops.random``).

    Args:
        roots: the nodes to compute (None entries are kept as None).
    Returns:
        The same nodes where no mask feeds them, else copies reading the numbered masks.
    """
    order = topo_order([r for r in roots if r is not None])
    for n in order:  # the cell is one graph for every t: a mask made there would be one for all steps
        if n.op == "scan" and any(c.op == "dropout_mask" for c in topo_order(n.attrs["cell"].forward_roots())):
            raise SymbpError(f"scan {n.label!r}: a dropout mask is made inside the step; dropout inside a loop "
                             "is not supported: apply it before or after the loop, or use the recurrent layers' "
                             "dropout= and recurrent_dropout=")
    streams = {n.id: s for s, n in enumerate(n for n in order if n.op == "dropout_mask")}

    def number(n: Node, ins: list[Node]) -> Node:
        if n.id not in streams:
            return _with_inputs(n, ins)
        m = Node(n.op, (), n.shape, n.dtype, {**n.attrs, "stream": streams[n.id]}, n.name, n.label)
        m.origin = n.origin
        return m

    return _rewrite(roots, number)


def _rewrite(roots: list, rule) -> list:
    """Rebuild the graph of ``roots`` bottom-up: ``rule(node, new inputs) -> node``, once per
    node (memoised over the DAG), iteratively (deep graphs cannot hit the recursion limit)."""
    new: dict[int, Node] = {}
    for n in topo_order([r for r in roots if r is not None]):
        new[n.id] = rule(n, [new[i.id] for i in n.inputs])
    return [None if r is None else new[r.id] for r in roots]


def _with_inputs(n: Node, ins: list[Node]) -> Node:
    """``n`` itself when its inputs are unchanged, else a copy reading ``ins`` (same origin, so
    generated code still points to the equation it computes)."""
    if all(a is b for a, b in zip(ins, n.inputs)):
        return n
    m = Node(n.op, ins, n.shape, n.dtype, n.attrs, n.name, n.label)
    m.origin = n.origin
    return m


def _scan(n: Node, ins: list[Node]) -> Node:
    """A scan whose cell is in inference form; captured tensors the rewritten cell no longer
    reads (e.g. a recurrent dropout mask) are dropped, so inference never computes them."""
    cell = n.attrs["cell"]
    fwd = [*cell.carry_out, *cell.ys]
    rewritten = inference_form(fwd)
    if all(a is b for a, b in zip(rewritten, fwd)):
        return _with_inputs(n, ins)
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
