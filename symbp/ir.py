"""The tensor graph: nodes, shapes, broadcasting and names.

A node is one op applied to whole arrays. Shapes are tuples of ints, with ``None`` standing
for the batch size, which is only known when data arrives (``(None, 64)`` is a batch of
64-vectors). Shape rules run when a node is built, so a mistake is reported where the user
made it, naming the op and the user's layer or parameter.
"""

from __future__ import annotations

import itertools
import keyword
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: building and compiling a model never needs networkx
    import networkx as nx

Shape = tuple  # tuple[int | None, ...]

DTYPES = ("float", "int64")
"""Graph-level dtypes. "float" becomes float32 or float64 when the model is compiled."""

_ids = itertools.count()
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # used with fullmatch: "$" would accept a trailing newline


class SymbpError(ValueError):
    """A mistake in a model or in the data given to it, explained in the user's terms."""


def check_identifier(name: str, what: str) -> str:
    """Return ``name`` if it can name a variable in generated code, else raise SymbpError."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name) or keyword.iskeyword(name):
        raise SymbpError(
            f"{what} name {name!r} is not a valid Python identifier "
            "(letters, digits and underscores, not starting with a digit, not a keyword)"
        )
    if name.startswith("_"):
        raise SymbpError(f"{what} name {name!r}: names starting with '_' are reserved")
    return name


def sanitise(name: str) -> str:
    """Turn any text into a safe identifier fragment (for layer and node labels)."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", str(name)).strip("_") or "t"
    return "n" + s if s[0].isdigit() else s


def fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def broadcast_shapes(shapes: Iterable[Shape], what: str) -> Shape:
    """NumPy broadcasting, where None (the batch size) matches only None or 1."""
    shapes = list(shapes)
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise SymbpError(f"{what}: shapes {', '.join(fmt_shape(s) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    if out.count(None) > 1:
        # e.g. (batch, 1) against (batch,): NumPy would broadcast the batch axis of one
        # against a feature axis of the other, making a batch x batch result.
        raise SymbpError(f"{what}: shapes {', '.join(fmt_shape(s) for s in shapes)} would broadcast the "
                         "batch axis against another axis; reshape so the batch axes line up")
    return tuple(out)


class Node:
    """One tensor op in the graph.

    Attributes:
        op: name of the op in the registry (``symbp.ops.OPS``).
        inputs: the nodes this one reads.
        shape: static shape; ``None`` marks the batch axis.
        dtype: "float" or "int64".
        attrs: op parameters (hashable values: ints, tuples, SymPy expressions, strings).
        name: a user-facing name (parameters, inputs, layer outputs) or None.
        id: creation order, which makes every traversal deterministic.
        origin: ids of the derivation's nodes this node computes; rewrites (fusion, shared
            subexpressions) keep them, so generated code can point back to the equations.
    """

    __slots__ = ("op", "inputs", "shape", "dtype", "attrs", "name", "id", "label", "origin", "__weakref__")
    __array_priority__ = 1000  # let `ndarray @ node` reach Node.__rmatmul__

    def __init__(self, op: str, inputs: tuple, shape: Shape, dtype: str = "float",
                 attrs: dict | None = None, name: str | None = None, label: str | None = None):
        self.op = op
        self.inputs = tuple(inputs)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.attrs = dict(attrs or {})
        self.name = name
        self.label = label  # layer scope, e.g. "fc1", used to name buffers and in errors
        self.id = next(_ids)
        self.origin = (self.id,)  # the derivation's nodes this one computes (set by optimise)

    # -- identity -----------------------------------------------------------------------
    def key(self) -> tuple:
        """Structural identity: op, inputs and attrs (used by common-subexpression removal)."""
        return (self.op, tuple(i.id for i in self.inputs), tuple(sorted(self.attrs.items())))

    def __repr__(self) -> str:
        who = f" {self.name!r}" if self.name else (f" in {self.label!r}" if self.label else "")
        return f"<{self.op}{who} {fmt_shape(self.shape)}>"

    def describe(self) -> str:
        """How errors refer to this node: by parameter/input name, else layer, else op."""
        if self.name:
            kind = {"param": "parameter", "input": "input"}.get(self.op, "node")
            return f"{kind} {self.name!r}"
        if self.label:
            return f"layer {self.label!r} ({self.op})"
        return f"op {self.op!r}"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def batched(self) -> bool:
        return None in self.shape

    # -- operators: sugar over symbp.ops ------------------------------------------------
    def __add__(self, other): return _ops().add(self, other)
    def __radd__(self, other): return _ops().add(other, self)
    def __sub__(self, other): return _ops().sub(self, other)
    def __rsub__(self, other): return _ops().sub(other, self)
    def __mul__(self, other): return _ops().mul(self, other)
    def __rmul__(self, other): return _ops().mul(other, self)
    def __truediv__(self, other): return _ops().div(self, other)
    def __rtruediv__(self, other): return _ops().div(other, self)
    def __neg__(self): return _ops().neg(self)
    def __pow__(self, other): return _ops().power(self, other)
    def __matmul__(self, other): return _ops().matmul(self, other)
    def __rmatmul__(self, other): return _ops().matmul(other, self)
    def __getitem__(self, index): return _ops().getitem(self, index)
    def __gt__(self, other): return _ops().greater(self, other)
    def __lt__(self, other): return _ops().greater(other, self)
    __hash__ = object.__hash__

    def __bool__(self):
        raise SymbpError("a symbolic tensor has no truth value; use sb.where(cond, a, b) to choose")

    @property
    def T(self) -> Node:
        return _ops().transpose(self)

    def sum(self, axis=None, keepdims=False): return _ops().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops().mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops().max(self, axis, keepdims)
    def reshape(self, *shape): return _ops().reshape(self, shape[0] if len(shape) == 1 else shape)


def _ops():
    from symbp import ops  # the operators are sugar; the registry lives there
    return ops


def topo_order(outputs: Iterable[Node]) -> list[Node]:
    """Every ancestor of ``outputs``, inputs before users, ties broken by creation order.

    Iterative, so deep graphs (long unrolled sequences) cannot hit the recursion limit.
    """
    seen: dict[int, Node] = {}
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n.id not in seen:
            seen[n.id] = n
            stack.extend(n.inputs)
    # Node ids grow with creation and every input is created before its user, so sorting by
    # id is a topological order, and the same one on every run.
    return [seen[i] for i in sorted(seen)]


def users_of(nodes: Iterable[Node]) -> dict[int, list[Node]]:
    users: dict[int, list[Node]] = {}
    for n in nodes:
        for i in n.inputs:
            users.setdefault(i.id, []).append(n)
    return users


def to_networkx(outputs: Iterable[Node]) -> nx.DiGraph:
    """The graph as a networkx DiGraph: node key is the node id, data holds op/shape/name."""
    import networkx as nx

    g = nx.DiGraph()
    for n in topo_order(outputs):
        g.add_node(n.id, op=n.op, shape=n.shape, dtype=n.dtype, name=n.name, label=n.label, node=n)
        for pos, i in enumerate(n.inputs):
            g.add_edge(i.id, n.id, pos=pos)
    return g


