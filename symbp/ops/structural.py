"""Structural ops: a shape rule and a vector-Jacobian rule each, written with other ops.

Leaves (inputs, parameters, constants) are declared here too, so every node has an entry
in the registry. Axes are always normalised to non-negative, sorted tuples.
"""

from __future__ import annotations

import math

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.ops import elementwise as E
from symbp.registry import LazyModule, OpDef, register

sp = LazyModule("sympy")  # equation readings only: building a model never imports SymPy
N = LazyModule("symbp.notation")


def node(op: str, inputs, label=None, **attrs) -> Node:
    """Build a structural node, running its shape rule (which raises on a mismatch)."""
    inputs = tuple(inputs)
    for i in inputs:
        if not isinstance(i, Node):
            raise SymbpError(f"op {op!r}: expected a tensor, got {type(i).__name__} {i!r}")
    from symbp.registry import opdef

    shape, dtype = opdef(op).shape(inputs, **attrs)
    return Node(op, inputs, shape, dtype, attrs, label=label)


def norm_axes(x: Node, axis, what: str) -> tuple:
    if axis is None:
        return tuple(range(x.ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or not -x.ndim <= a < x.ndim:
            raise SymbpError(f"{what}: axis {a!r} is out of range for {x.describe()} of shape {fmt_shape(x.shape)}")
        out.append(a % x.ndim)
    if len(set(out)) != len(out):
        raise SymbpError(f"{what}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def _leaf_shape(inputs, **attrs):
    raise AssertionError("leaves are built directly")


for _leaf in ("input", "param", "const"):
    register(OpDef(_leaf, "leaf", shape=_leaf_shape))


def const(value: float, shape=()) -> Node:
    """A constant tensor filled with ``value``; a None in ``shape`` follows the batch size."""
    return Node("const", (), tuple(shape), "float", {"value": float(value)})


# -- dot: matrix products with transposes folded in ----------------------------------------

def _dot_shape(inputs, ta=False, tb=False):
    a, b = inputs
    where = f"matmul of {a.describe()} {fmt_shape(a.shape)} and {b.describe()} {fmt_shape(b.shape)}"
    if a.dtype != "float" or b.dtype != "float":
        raise SymbpError(f"{where}: both operands must be float tensors")
    if ta:
        # A^T B with every leading axis contracted: (L..., K), (L..., N) -> (K, N)
        if tb or a.ndim < 1 or a.shape[:-1] != b.shape[:-1]:
            raise SymbpError(f"{where}: leading axes differ")
        return (a.shape[-1], b.shape[-1]), "float"
    if b.ndim != 2 or a.ndim < 1:
        raise SymbpError(f"{where}: the right operand must be a matrix (2 axes), the left at least a vector")
    k_b, n = (b.shape[1], b.shape[0]) if tb else b.shape
    if a.shape[-1] != k_b:
        raise SymbpError(f"{where}: inner dimensions {a.shape[-1]} and {k_b} differ")
    return a.shape[:-1] + (n,), "float"


def _dot_vjp(nd, g):
    a, b = nd.inputs
    ta, tb = nd.attrs["ta"], nd.attrs["tb"]
    if ta:
        return dot(b, g, tb=True), dot(a, g)
    if tb:
        return dot(g, b), dot(g, a, ta=True)
    return dot(g, b, tb=True), dot(a, g, ta=True)


register(OpDef("dot", "structural", shape=_dot_shape, vjp=_dot_vjp,
               sample={"shapes": [(None, 3), (3, 4)], "attrs": {"ta": False, "tb": False}},
               show=lambda a, n: N.MatMul(N.Transpose(a[0]) if n.attrs["ta"] else a[0],
                                          N.Transpose(a[1]) if n.attrs["tb"] else a[1])))


def dot(a: Node, b: Node, ta: bool = False, tb: bool = False, label=None) -> Node:
    return node("dot", (a, b), label=label, ta=ta, tb=tb)


def matmul(a, b) -> Node:
    """``a @ b``; a transpose of a matrix on either side is folded into the product."""
    if not isinstance(a, Node) or not isinstance(b, Node):
        raise SymbpError("matmul (@) needs two symbolic tensors; wrap arrays with sb.constant")
    # only a real swap folds: the identity permutation (0, 1) is no transpose at all
    if b.op == "transpose" and b.ndim == 2 and b.attrs["perm"] == (1, 0):
        return dot(a, b.inputs[0], tb=True)
    if a.op == "transpose" and a.ndim == 2 and b.ndim == 2 and a.attrs["perm"] == (1, 0):
        return dot(a.inputs[0], b, ta=True)
    if a.shape[:1] == b.shape[:1] == (None,):  # per-example matrices on both sides: a batched contraction
        from symbp.ops.sequence import batched_matmul  # same stage; sequence builds on this module

        return batched_matmul(a, b)
    return dot(a, b)


# -- transpose ------------------------------------------------------------------------------

def _transpose_shape(inputs, perm):
    (x,) = inputs
    if sorted(perm) != list(range(x.ndim)):
        raise SymbpError(f"transpose of {x.describe()}: {perm} is not a permutation of its {x.ndim} axes")
    return tuple(x.shape[p] for p in perm), x.dtype


def _transpose_vjp(nd, g):
    perm = nd.attrs["perm"]
    return (transpose(g, tuple(sorted(range(len(perm)), key=perm.__getitem__))),)


register(OpDef("transpose", "structural", shape=_transpose_shape, vjp=_transpose_vjp,
               sample={"shapes": [(None, 3)], "attrs": {"perm": (1, 0)}},
               show=lambda a, n: N.Transpose(a[0]) if n.attrs["perm"] == (1, 0) else
               N.func("transpose", N.dshape(n.shape), a[0], sub=str(n.attrs["perm"]))))


def transpose(x: Node, perm=None) -> Node:
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(perm)
    return node("transpose", (x,), perm=perm)


# -- reductions -----------------------------------------------------------------------------

def _reduce_shape(inputs, axes, keepdims):
    (x,) = inputs
    if x.dtype != "float":
        raise SymbpError(f"reduction of {x.describe()}: needs a float tensor, got {x.dtype}")
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keepdims or i not in axes)
    return shape, "float"


def _sum_vjp(nd, g):
    (x,) = nd.inputs
    return (broadcast_like(g, x, () if nd.attrs["keepdims"] else nd.attrs["axes"]),)


def _max_vjp(nd, g):
    (x,) = nd.inputs
    axes, keep = nd.attrs["axes"], nd.attrs["keepdims"]
    y = nd if keep else expand_dims(nd, axes)
    gk = g if keep else expand_dims(g, axes)
    # The gradient goes to the maximum; ties share it equally.
    mask = E.apply("where", E.sub(y, x), 0.0, 1.0)
    count = node("sum", (mask,), axes=axes, keepdims=True)
    return (E.make("ew", [mask, gk, count], E.S.symbols(3)[0] * E.S.symbols(3)[1] / E.S.symbols(3)[2]),)


register(OpDef("sum", "structural", shape=_reduce_shape, vjp=_sum_vjp,
               sample={"shapes": [(None, 3, 4)], "attrs": {"axes": (0, 2), "keepdims": False}},
               show=lambda a, n: N.func("Σ", N.dshape(n.shape), a[0], sub=N.axes_label(n.inputs[0], n.attrs["axes"]))))
register(OpDef("max", "structural", shape=_reduce_shape, vjp=_max_vjp,
               sample={"shapes": [(None, 5)], "attrs": {"axes": (1,), "keepdims": False}},
               show=lambda a, n: N.func("max", N.dshape(n.shape), a[0],
                                        sub=N.axes_label(n.inputs[0], n.attrs["axes"]))))


def _size_shape(inputs, axes):
    return (), "float"


register(OpDef("size", "structural", shape=_size_shape, vjp=None,
               sample={"shapes": [(None, 3)], "attrs": {"axes": (0, 1)}},
               show=lambda a, n: sp.Mul(*[N.B if n.inputs[0].shape[k] is None else n.inputs[0].shape[k]
                                          for k in n.attrs["axes"]])))


def size(x: Node, axes: tuple) -> Node:
    """The number of elements of ``x`` along ``axes``, a float; known at run time for batch axes."""
    dims = [x.shape[a] for a in axes]
    if None not in dims:
        return const(math.prod(dims))
    return node("size", (x,), axes=tuple(axes))


# -- broadcasting and reshaping -------------------------------------------------------------

def _expand_shape(inputs, axes):
    (x,) = inputs
    shape = list(x.shape)
    for a in sorted(axes):
        shape.insert(a, 1)
    return tuple(shape), x.dtype


register(OpDef("expand_dims", "structural", shape=_expand_shape,
               vjp=lambda nd, g: (reshape_batched(g, nd.inputs[0].shape),),
               sample={"shapes": [(None, 3)], "attrs": {"axes": (1,)}}))


def expand_dims(x: Node, axes: tuple) -> Node:
    return node("expand_dims", (x,), axes=tuple(sorted(axes)))


def _broadcast_shape(inputs, axes, shape):
    (g,) = inputs
    return tuple(shape), g.dtype


def _broadcast_vjp(nd, g):
    x = nd.inputs[0]
    return (reshape_batched(reduce_to(g, _expand_shape((x,), nd.attrs["axes"])[0]), x.shape),)


# The target shape is an attribute, not an input read for its shape (the batch size is the
# step's): the gradient of a sum inside a recurrence's step then does not make the step save
# the summed tensor (see unslice in symbp.ops.indexing).
register(OpDef("broadcast_like", "structural", shape=_broadcast_shape, vjp=_broadcast_vjp,
               sample={"shapes": [(3,)], "attrs": {"axes": (), "shape": (None, 3)}}))


def broadcast_like(g: Node, ref: Node, axes: tuple = ()) -> Node:
    """``g`` with new axes inserted at ``axes``, broadcast to the shape of ``ref``."""
    return node("broadcast_like", (g,), axes=tuple(axes), shape=ref.shape)


def reduce_to(c: Node, shape: tuple, drop: tuple = ()) -> Node:
    """Sum ``c`` down to ``shape`` (undoing broadcasting); ``drop`` are axes to remove."""
    if drop:
        c = node("sum", (c,), axes=tuple(drop), keepdims=False)
    extra = c.ndim - len(shape)
    if extra > 0:
        c = node("sum", (c,), axes=tuple(range(extra)), keepdims=False)
    axes = tuple(i for i, (dc, ds) in enumerate(zip(c.shape, shape)) if ds == 1 and dc != 1)
    if axes:
        c = node("sum", (c,), axes=axes, keepdims=True)
    return c


def _reshape_shape(inputs, shape):
    (x,) = inputs
    if shape.count(None) != x.shape.count(None) or \
            math.prod(d for d in x.shape if d) != math.prod(d for d in shape if d):
        raise SymbpError(f"reshape of {x.describe()}: cannot turn {fmt_shape(x.shape)} "
                         f"into {fmt_shape(shape)} (different sizes)")
    return tuple(shape), x.dtype


register(OpDef("reshape", "structural", shape=_reshape_shape,
               vjp=lambda nd, g: (reshape_batched(g, nd.inputs[0].shape),),
               sample={"shapes": [(None, 2, 3)], "attrs": {"shape": (None, 6)}},
               show=lambda a, n: N.func("reshape", N.dshape(n.shape), a[0]) if N.is_matrix(a[0]) else a[0]))


def reshape_batched(x: Node, shape: tuple) -> Node:
    """Reshape to a full shape, batch axis included (internal: no check that it stays put)."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    if x.op in ("expand_dims", "reshape") and x.inputs[0].shape == shape:
        return x.inputs[0]
    return node("reshape", (x,), shape=shape)


def reshape(x: Node, shape) -> Node:
    """Reshape each example: ``shape`` excludes the batch axis, which stays first."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    lead = (None,) if x.shape[:1] == (None,) else ()
    if None in x.shape[len(lead):]:
        raise SymbpError(f"reshape of {x.describe()}: only tensors whose batch axis leads can be reshaped")
    if shape.count(-1) == 1:
        known = math.prod(d for d in shape if d != -1)
        total = math.prod(x.shape[len(lead):])
        shape = tuple(total // known if d == -1 else d for d in shape)
    if any(not isinstance(d, int) or d < 1 for d in shape):
        raise SymbpError(f"reshape of {x.describe()}: bad target shape {shape!r}")
    return node("reshape", (x,), shape=lead + shape)


# -- joining (slicing is in symbp.ops.indexing) --------------------------------------------

def _concat_shape(inputs, axis):
    first = inputs[0]
    for other in inputs[1:]:
        if other.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(first.shape, other.shape))
                                           if i != axis):
            raise SymbpError(f"concat along axis {axis}: {first.describe()} {fmt_shape(first.shape)} and "
                             f"{other.describe()} {fmt_shape(other.shape)} differ off that axis")
    if first.shape[axis] is None:
        raise SymbpError("concat cannot join along the batch axis")
    shape = list(first.shape)
    shape[axis] = sum(i.shape[axis] for i in inputs)
    return tuple(shape), first.dtype


def _concat_vjp(nd, g):
    axis, out, start = nd.attrs["axis"], [], 0
    for i in nd.inputs:
        stop = start + i.shape[axis]
        index = tuple((start, stop, 1) if k == axis else (0, 0, 1) if d is None else (0, d, 1)
                      for k, d in enumerate(nd.shape))
        out.append(node("slice", (g,), index=index))
        start = stop
    return tuple(out)


register(OpDef("concat", "structural", shape=_concat_shape, vjp=_concat_vjp,
               sample={"shapes": [(None, 2), (None, 3)], "attrs": {"axis": 1}},
               show=lambda a, n: N.func("concat", N.dshape(n.shape), *a)))


def concat(xs, axis: int = -1) -> Node:
    xs = list(xs)
    if not xs:
        raise SymbpError("concat needs at least one tensor")
    return node("concat", xs, axis=axis % xs[0].ndim)


# -- labels and gradient control ------------------------------------------------------------

def _onehot_shape(inputs, depth):
    (y,) = inputs
    if y.dtype != "int64":
        raise SymbpError(f"one-hot of {y.describe()}: class labels must be int64, got {y.dtype}")
    return y.shape + (depth,), "float"


register(OpDef("onehot", "structural", shape=_onehot_shape, vjp=None,
               sample={"shapes": [(None,)], "dtypes": ["int64"], "attrs": {"depth": 4}},
               show=lambda a, n: N.func("onehot", N.dshape(n.shape), a[0])))


def onehot(labels: Node, depth: int) -> Node:
    return node("onehot", (labels,), depth=int(depth))


register(OpDef("stop_gradient", "structural", shape=lambda inputs: (inputs[0].shape, inputs[0].dtype),
               vjp=lambda nd, g: (None,), sample={"shapes": [(None, 3)], "blocks_gradient": True}))


def stop_gradient(x: Node) -> Node:
    """x in the forward pass; no gradient flows back through it."""
    return node("stop_gradient", (x,))
