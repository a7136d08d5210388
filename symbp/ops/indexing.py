"""Indexing: ``x[index]`` with NumPy's basic indexing, and the slice/unslice ops behind it.

Indices follow the shape symbp reports, batch axis included, as in NumPy: ``x[:, 2:5]`` on a
(None, 64) input, ``s[:, -1]`` (the last step) on a (None, T, F) one, ``x_t[:, 0]`` inside a
scan step. The batch axis can only be taken whole (``:`` or ``...``).

A slice node stores its index normalised: per axis an int (the axis is dropped) or a
``slice.indices`` triple, with (0, 0, 1) for the whole batch axis.
"""

from __future__ import annotations

import numbers

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.ops.structural import node
from symbp.registry import LazyModule, OpDef, register

N = LazyModule("symbp.notation")  # equation readings only: building a model never imports SymPy


def _slice_shape(inputs, index):
    (x,) = inputs
    shape = []
    for d, ix in zip(x.shape, index):
        if isinstance(ix, int):
            continue
        start, stop, step = ix
        shape.append(d if d is None else len(range(start, stop, step)))
    return tuple(shape), x.dtype


# unslice pads g with zeros into the sliced tensor's shape, which it keeps as an attribute rather
# than reading the tensor (the batch size comes from g): a recurrence's backward step then does not
# need the sliced value saved at every step (an LSTM's pre-activations, 4H of its 11H per step).
register(OpDef("slice", "structural", shape=_slice_shape,
               vjp=lambda nd, g: (node("unslice", (g,), index=nd.attrs["index"], shape=nd.inputs[0].shape),),
               sample={"shapes": [(None, 6)], "attrs": {"index": ((0, 0, 1), (1, 5, 2))}},
               show=lambda a, n: N.func("index", N.dshape(n.shape), a[0], sub=N.format_index(n.attrs["index"]))))
register(OpDef("unslice", "structural", shape=lambda inputs, index, shape: (tuple(shape), inputs[0].dtype),
               vjp=lambda nd, g: (node("slice", (g,), index=nd.attrs["index"]),),
               sample={"shapes": [(None, 2)], "attrs": {"index": ((0, 0, 1), (1, 5, 2)), "shape": (None, 6)}},
               show=lambda a, n: N.func("unslice", N.dshape(n.shape), a[0], sub=N.format_index(n.attrs["index"]))))


def getitem(x: Node, index) -> Node:
    """``x[index]`` with NumPy's basic indexing over the shape symbp reports.

    Indices follow ``x.shape``, batch axis included: ``x[:, 2:5]`` on a (None, 64) input and
    ``s[:, -1]`` (the last step) on a (None, T, F) one, as in NumPy. The batch axis (``None``)
    can only be taken whole, with ``:`` or ``...``: an example is not addressable in a graph
    that runs on any batch size.

    Args:
        x: the tensor.
        index: an int, a slice, ``...`` or a tuple of them (one ``...`` at most).
    Returns:
        The slice node; int indices drop their axis.
    """
    if not isinstance(index, tuple):
        index = (index,)
    given, what = index, _indexed(x)
    if sum(i is Ellipsis for i in index) > 1:
        raise SymbpError(f"indexing {what}: an index can have only one '...'")
    if any(i is Ellipsis for i in index):
        k = next(j for j, i in enumerate(index) if i is Ellipsis)
        index = index[:k] + (slice(None),) * max(x.ndim - len(index) + 1, 0) + index[k + 1:]
    if len(index) > x.ndim:
        raise SymbpError(f"indexing {what}: too many indices ({len(index)}) for shape {fmt_shape(x.shape)}")
    index = index + (slice(None),) * (x.ndim - len(index))
    norm = []
    for axis, (d, ix) in enumerate(zip(x.shape, index)):
        if d is None:
            if not (isinstance(ix, slice) and ix.start is None and ix.stop is None and ix.step in (None, 1)):
                raise SymbpError(f"indexing {what} of shape {fmt_shape(x.shape)}: axis {axis} is the batch axis, "
                                 f"which can only be ':' or '...' (the graph runs on any batch size), got "
                                 f"{_text(ix)}. Indices follow the shape, as in NumPy{_hint(x, given)}")
            norm.append((0, 0, 1))
        elif isinstance(ix, slice):
            norm.append(ix.indices(d))
        elif _is_int(ix) and -d <= int(ix) < d:
            norm.append(int(ix) % d)
        else:
            raise SymbpError(f"indexing {what} of shape {fmt_shape(x.shape)}: index {_text(ix)} is not valid "
                             f"for an axis of size {d} (axis {axis}); use ints, slices and '...'")
    return node("slice", (x,), index=tuple(norm))


def _is_int(ix) -> bool:
    """An integer index (Python or NumPy), but not a bool, which NumPy reads as a mask."""
    return isinstance(ix, numbers.Integral) and not isinstance(ix, bool)


def _indexed(x: Node) -> str:
    """How an indexing error names the tensor; a scan step's placeholders by their role."""
    role = x.attrs.get("role") if x.op == "input" else None
    if role is not None:
        return {"x": f"the step's input x_t {role[1]}", "carry": f"the step's carry {role[1]}"}.get(
            role[0], f"{x.label or 'a tensor'} inside the step")
    return x.describe()


def _text(ix) -> str:
    """An index as the user typed it: ``2:5``, ``::-1``, ``0``."""
    if isinstance(ix, slice):
        parts = ["" if v is None else str(v) for v in (ix.start, ix.stop, ix.step)]
        return ":".join(parts[:2] if ix.step is None else parts)
    return "..." if ix is Ellipsis else repr(ix)


def _hint(x: Node, given: tuple) -> str:
    """"; did you mean [:, 2:5]?" when the index reads as per example (an older symbp's habit)."""
    if x.shape[0] is not None or len(given) >= x.ndim or any(i is Ellipsis for i in given):
        return "."
    return f"; did you mean [:, {', '.join(_text(i) for i in given)}]?"
