"""NumPy emitters of the sequence ops: embedding gather and scatter-add, argmax, batched einsum.

No one-hot anywhere: a lookup is ``np.take`` of the rows, its gradient ``np.add.at`` into
them, so both cost what the ids cost, whatever the vocabulary. Contractions run as one
batched ``np.matmul`` over transposed views (BLAS), not ``np.einsum``'s element loops.
"""

from __future__ import annotations

import math

from codegen.spec import range_check
from symbp.ops.sequence import groups, parse


def _gather(n, out, ids, table):
    # ids are checked here, where they are read (through slices, concatenations and loops):
    # negative ids wrap past any row count as uint64, so one reduction checks both ends
    labels, rows, kind, reader = range_check(n)
    return [f"if {ids}.view(np.uint64).max() >= {rows}:",
            f"    _bad_label({labels!r}, {rows}, {ids}[({ids} < 0) | ({ids} >= {rows})].flat[0], {kind!r}, "
            f"{reader!r})",
            f"np.take({table}, {ids}, axis=0, out={out}, mode='clip')"]


def _ctc_labels(n, out, labels, lengths):
    # a blank (0) within an example's label length would pass for padding: caught where read
    args = range_check(n)
    return [f"if (({labels} == 0) & (np.arange({n.shape[1]}) < {lengths}[:, None])).any():",
            f"    _bad_label({args[0]!r}, {args[1]}, 0, {', '.join(map(repr, args[2:]))})",
            f"np.copyto({out}, {labels})"]


def _scatter_add(n, out, g, ids):
    # the lookup that reads these ids checked them in the forward pass of the same function
    width = n.shape[-1]
    return [f"{out}.fill(0.0)", f"np.add.at({out}, {ids}.reshape(-1), {g}.reshape(-1, {width}))"]


def _einsum(n, out, x, y):
    a, b, res = parse(n.attrs["spec"])
    sizes = dict(zip(a, n.inputs[0].shape)) | dict(zip(b, n.inputs[1].shape))
    batch, rows, inner, cols = groups(n.attrs["spec"])
    m, k, w = (math.prod(sizes[c] for c in g) for g in (rows, inner, cols))

    def operand(v, sub, order, shape):
        perm = tuple(sub.index(c) for c in order)
        v = v if perm == tuple(range(len(sub))) else f"{v}.transpose({perm})"
        return f"{v}.reshape(-1, {shape[0]}, {shape[1]})"

    lhs = operand(x, a, batch + rows + inner, (m, k))
    rhs = operand(y, b, batch + inner + cols, (k, w))
    canon = batch + rows + cols
    if canon == list(res):
        return [f"np.matmul({lhs}, {rhs}, out={out}.reshape(-1, {m}, {w}))"]
    back = tuple(canon.index(c) for c in res)
    full = "(-1, " + ", ".join(str(sizes[c]) for c in canon[1:]) + ")"
    return [f"{out}[...] = np.matmul({lhs}, {rhs}).reshape{full}.transpose({back})"]


EMIT = {
    "gather": _gather,
    "scatter_add": _scatter_add,
    "argmax": lambda n, out, x: [f"np.argmax({x}, axis={n.attrs['axis']}, out={out})"],
    "einsum": _einsum,
    "ctc_labels": _ctc_labels,
}
