"""Ops for sequence models: embedding lookups, one-hot and argmax, batched contractions.

- ``gather``: rows of a table picked by int64 ids (``sb.embedding``); its vector-Jacobian is
  ``scatter_add``, which adds each cotangent row into the row its id picked. Neither builds a
  one-hot: the cost follows the number of ids, not the vocabulary.
- ``argmax``: int64 indices, no gradient.
- ``einsum``: a contraction of two batched operands whose batch letter leads every subscript
  (``"btd,bsd->bts"``); ``q @ k`` of two batched operands is one. Its vector-Jacobian is two
  more einsums, so every derivative is again a batched contraction.
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.ops import structural as St
from symbp.registry import LazyModule, OpDef, register

N = LazyModule("symbp.notation")  # equation readings only: building a model never imports SymPy

# -- embedding: gather and its scatter-add -----------------------------------------------------

def _ids_check(ids: Node, where: str) -> None:
    if not isinstance(ids, Node) or ids.dtype != "int64":
        got = ids.dtype if isinstance(ids, Node) else type(ids).__name__
        raise SymbpError(f"{where}: ids must be an int64 tensor (m.input(..., dtype='int64')), got {got}")


def _gather_shape(inputs):
    ids, table = inputs
    where = f"embedding of {ids.describe()} {fmt_shape(ids.shape)} in {table.describe()} {fmt_shape(table.shape)}"
    _ids_check(ids, where)
    if table.dtype != "float" or table.ndim != 2 or None in table.shape:
        raise SymbpError(f"{where}: the table must be a float matrix (vocabulary, width)")
    return ids.shape + (table.shape[1],), "float"


def _gather_vjp(nd, g):
    ids, table = nd.inputs
    return None, node_scatter(g, ids, table.shape[0])


register(OpDef("gather", "structural", shape=_gather_shape, vjp=_gather_vjp,
               sample={"shapes": [(None, 3), (5, 2)], "dtypes": ["int64", "float"], "int_high": 5},
               show=lambda a, n: N.func("embed", N.dshape(n.shape), a[1], a[0])))


def _scatter_shape(inputs, rows):
    g, ids = inputs
    _ids_check(ids, "scatter_add")
    if g.shape[:-1] != ids.shape:
        raise SymbpError(f"scatter_add: rows {fmt_shape(g.shape)} do not match ids {fmt_shape(ids.shape)}")
    return (rows, g.shape[-1]), g.dtype


register(OpDef("scatter_add", "structural", shape=_scatter_shape,
               vjp=lambda nd, g: (embedding(nd.inputs[1], g), None),
               sample={"shapes": [(None, 3, 2), (None, 3)], "dtypes": ["float", "int64"], "attrs": {"rows": 4},
                       "int_high": 4},
               show=lambda a, n: N.func("scatter_add", N.dshape(n.shape), a[0], a[1])))


def node_scatter(g: Node, ids: Node, rows: int) -> Node:
    """A (rows, width) matrix: row r is the sum of the rows of ``g`` whose id is r."""
    return St.node("scatter_add", (g, ids), rows=int(rows))


def embedding(ids: Node, table: Node) -> Node:
    """The rows of ``table`` picked by ``ids``: ``table[ids]``.

    Args:
        ids: int64 token ids of any shape, batch axis first, each in 0..V-1 (checked where the
            generated code reads them: an id out of range is an error naming the input).
        table: the (V, D) embedding matrix, usually a parameter.
    Returns:
        A float tensor of shape ``ids.shape + (D,)``; its gradient adds into the rows used.
    """
    return St.node("gather", (ids, table))


def one_hot(ids: Node, depth: int) -> Node:
    """``ids`` one-hot encoded over ``depth`` classes: float 0/1 of shape ``ids.shape + (depth,)``.

    Args:
        ids: int64 class indices (range-checked where the generated code reads them).
        depth: the number of classes.
    Returns:
        A float tensor (so it can be multiplied); no gradient flows to ``ids``.
    """
    if not isinstance(depth, int) or depth < 1:
        raise SymbpError(f"one_hot: depth must be a positive int, got {depth!r}")
    return St.onehot(ids, depth)


# -- argmax ------------------------------------------------------------------------------------

def _argmax_shape(inputs, axis):
    (x,) = inputs
    if x.dtype != "float":
        raise SymbpError(f"argmax of {x.describe()}: needs a float tensor, got {x.dtype}")
    if x.shape[axis] is None:
        raise SymbpError(f"argmax of {x.describe()} {fmt_shape(x.shape)}: axis {axis} is the batch axis")
    return tuple(d for k, d in enumerate(x.shape) if k != axis), "int64"


register(OpDef("argmax", "structural", shape=_argmax_shape, vjp=None,
               sample={"shapes": [(None, 5)], "attrs": {"axis": 1}, "int_result": 5,
                       "blocks_gradient": True},
               show=lambda a, n: N.func("argmax", N.dshape(n.shape), a[0],
                                        sub=N.axes_label(n.inputs[0], (n.attrs["axis"],)))))


def argmax(x: Node, axis: int = -1) -> Node:
    """The index of the largest value along ``axis`` (the first one on ties): int64, no gradient."""
    (axis,) = St.norm_axes(x, axis, "argmax")
    return St.node("argmax", (x,), axis=axis)


# -- einsum: batched contractions ----------------------------------------------------------------

def parse(spec: str) -> tuple[str, str, str]:
    """``"btd,bsd->bts"`` as its three subscripts; a SymbpError unless it is a contraction of two
    batched operands (same batch letter first everywhere, each letter once per operand, each
    letter in at least two of the three)."""
    text = spec.replace(" ", "") if isinstance(spec, str) else ""
    ins, arrow, out = text.partition("->")
    parts = ins.split(",")
    bad = f"einsum {spec!r}"
    if not arrow or len(parts) != 2 or not all(p.isalpha() and p.isascii() for p in (*parts, out)):
        raise SymbpError(f"{bad}: write two operands and an explicit output, e.g. 'btd,bsd->bts'")
    a, b = parts
    if not (a[0] == b[0] == out[0]):
        raise SymbpError(f"{bad}: the batch letter must come first on every operand and on the output "
                         "(both operands are batched: (batch, ...))")
    for s in (a, b, out):
        if len(set(s)) != len(s):
            raise SymbpError(f"{bad}: letter repeated in {s!r} (diagonals are not supported)")
    for ch in set(a + b + out):
        if (ch in a) + (ch in b) + (ch in out) < 2:
            raise SymbpError(f"{bad}: letter {ch!r} appears only once; sum that axis first with sb.sum")
    return a, b, out


def groups(spec: str) -> tuple[list, list, list, list]:
    """The letters of a batched contraction as batch, rows (M), contracted (K) and columns (N):
    the result is, per batch element, an (M, K) @ (K, N) product. Each group is in the order the
    result has it (K: the first operand's order); backends lay the operands out this way."""
    a, b, out = parse(spec)
    batch = [c for c in out if c in a and c in b]
    rows = [c for c in out if c in a and c not in b]
    cols = [c for c in out if c in b and c not in a]
    inner = [c for c in a if c in b and c not in out]
    return batch, rows, inner, cols


def _einsum_shape(inputs, spec):
    x, y = inputs
    a, b, out = parse(spec)
    where = f"einsum {spec!r} of {x.describe()} {fmt_shape(x.shape)} and {y.describe()} {fmt_shape(y.shape)}"
    if x.dtype != "float" or y.dtype != "float":
        raise SymbpError(f"{where}: both operands must be float tensors")
    if x.ndim != len(a) or y.ndim != len(b):
        raise SymbpError(f"{where}: subscripts {a!r} and {b!r} need {len(a)} and {len(b)} axes")
    if x.shape[0] is not None or y.shape[0] is not None or None in x.shape[1:] + y.shape[1:]:
        raise SymbpError(f"{where}: both operands must be batched, with the batch axis first")
    sizes: dict = {}
    for sub, shape in ((a, x.shape), (b, y.shape)):
        for ch, d in zip(sub, shape):
            if sizes.setdefault(ch, d) != d:
                raise SymbpError(f"{where}: axis {ch!r} has sizes {sizes[ch]} and {d}")
    return tuple(sizes[ch] for ch in out), "float"


def _einsum_vjp(nd, g):
    x, y = nd.inputs
    a, b, out = parse(nd.attrs["spec"])
    return einsum(f"{out},{b}->{a}", g, y), einsum(f"{a},{out}->{b}", x, g)


register(OpDef("einsum", "structural", shape=_einsum_shape, vjp=_einsum_vjp,
               sample={"shapes": [(None, 3, 2), (None, 4, 2)], "attrs": {"spec": "btd,bsd->bts"}},
               show=lambda a, n: N.func("einsum", N.dshape(n.shape), *a, sub=n.attrs["spec"].replace("->", "→"))))


def einsum(spec: str, x: Node, y: Node) -> Node:
    """A batched contraction of two tensors, in einsum notation: ``einsum("btd,bsd->bts", q, k)``.

    Args:
        spec: subscripts of both operands and of the result; the batch letter leads each one.
            Letters in both operands but not the result are summed over.
        x: the first operand, (batch, ...).
        y: the second operand, (batch, ...).
    Returns:
        The contraction, shaped as the result's subscripts say.
    """
    if not isinstance(x, Node) or not isinstance(y, Node):
        raise SymbpError(f"einsum {spec!r}: both operands must be symbolic tensors")
    return St.node("einsum", (x, y), spec=spec.replace(" ", "") if isinstance(spec, str) else spec)


def batched_matmul(x: Node, y: Node) -> Node:
    """``x @ y`` for two batched operands: (batch, M, K) @ (batch, K, N) -> (batch, M, N)."""
    if x.ndim != 3 or y.ndim != 3 or x.shape[0] is not None or y.shape[0] is not None:
        raise SymbpError(f"matmul (@) of two batched tensors, {x.describe()} {fmt_shape(x.shape)} and "
                         f"{y.describe()} {fmt_shape(y.shape)}: both must have 3 axes, (batch, M, K) @ "
                         "(batch, K, N); use sb.einsum for other batched contractions")
    if x.shape[2] != y.shape[1]:
        raise SymbpError(f"matmul (@) of {x.describe()} {fmt_shape(x.shape)} and {y.describe()} "
                         f"{fmt_shape(y.shape)}: inner dimensions {x.shape[2]} and {y.shape[1]} differ")
    return einsum("bij,bjk->bik", x, y)
