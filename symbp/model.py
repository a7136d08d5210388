"""The model API: declare inputs and parameters, build a loss, minimise it."""

from __future__ import annotations

import weakref

from symbp import init as initialisers
from symbp.ir import DTYPES, Node, SymbpError, check_identifier, fmt_shape, topo_order
from symbp.ops.scan import traced_from

FLOAT_DTYPES = ("float32", "float64")
"""What ``m.input(..., dtype=)`` may name besides "float" and "int64": the dtype to compile at."""

# Leaf node id -> the model that declared it, so a layer called on a tensor finds its model.
# Weak values: a model that is gone takes its entries with it (node ids are never reused).
_OWNERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class Model:
    """A named network: its inputs, parameters, loss and prediction outputs.

    Example:
        m = sb.Model("mlp")
        x = m.input("x", (64,))                 # a batch of 64-vectors: shape (None, 64)
        W = m.param("W", (64, 10), init="glorot_uniform")
        m.minimize(sb.softmax_cross_entropy(x @ W, m.input("y", (), dtype="int64")))
    """

    def __init__(self, name: str = "model"):
        self.name = check_identifier(name, "model")
        self.inputs: dict[str, Node] = {}
        self.params: dict[str, Node] = {}
        self.outputs: dict[str, Node] = {}
        self.buffers: dict[str, Node] = {}  # non-trainable state (running statistics)
        self.updates: dict[str, Node] = {}  # buffer name -> the value ``step`` gives it
        self.loss: Node | None = None
        self.float_dtypes: dict[str, str] = {}  # input name -> "float32"/"float64" where declared

    @property
    def dtype(self) -> str | None:
        """The float dtype the inputs declare ("float32"/"float64"), or None: compile's default."""
        return next(iter(self.float_dtypes.values()), None)

    def _claim(self, name: str, what: str) -> str:
        check_identifier(name, what)
        for kind, table in (("input", self.inputs), ("parameter", self.params), ("output", self.outputs),
                            ("buffer", self.buffers)):
            if name in table:
                raise SymbpError(f"model {self.name!r}: {what} name {name!r} is already used by an {kind}"
                                 if kind == "input" else
                                 f"model {self.name!r}: {what} name {name!r} is already used by a {kind}")
        return name

    def input(self, name: str, shape=(), dtype: str = "float") -> Node:
        """Declare per-batch data. ``shape`` is per example; the batch axis is added in front.

        Args:
            name: the keyword under which data is passed to ``step``/``loss``.
            shape: the shape of one example, e.g. ``(64,)``, ``()`` for a scalar label,
                ``(T, F)`` for a sequence. The tensor's shape is ``(None, *shape)``.
            dtype: "float" (cast to the compiled dtype), "float32" or "float64" (also the
                dtype ``sb.compile`` uses unless given one), or "int64" (labels, ids).
        Returns:
            The input tensor.
        """
        self._claim(name, "input")
        shape = _check_shape(shape, f"input {name!r}")
        if dtype not in (*DTYPES, *FLOAT_DTYPES):
            raise SymbpError(f"input {name!r}: unknown dtype {dtype!r}; use one of "
                             f"{', '.join(sorted((*DTYPES, *FLOAT_DTYPES)))}")
        if dtype in FLOAT_DTYPES:
            clash = next(((k, d) for k, d in self.float_dtypes.items() if d != dtype), None)
            if clash:
                raise SymbpError(f"model {self.name!r}: input {name!r} is declared {dtype} but input {clash[0]!r} "
                                 f"is {clash[1]}; a model computes in one float dtype, so declare both alike "
                                 "(or \"float\", which follows the compiled dtype)")
            self.float_dtypes[name] = dtype
        n = Node("input", (), (None, *shape), "int64" if dtype == "int64" else "float", name=name)
        self.inputs[name] = n
        _OWNERS[n.id] = self
        return n

    def param(self, name: str, shape, init="glorot_uniform", **init_args) -> Node:
        """Declare a trainable parameter.

        Args:
            name: its name in ``tr.params`` and in generated code.
            shape: its full shape (parameters have no batch axis).
            init: an initialiser name (see ``symbp.init.INITIALISERS``) or a float constant.
            init_args: options for the initialiser (e.g. ``std=0.1`` for "normal").
        """
        self._claim(name, "parameter")
        shape = _check_shape(shape, f"parameter {name!r}")
        spec = initialisers.spec(init, init_args, f"parameter {name!r}")
        n = Node("param", (), shape, "float", {"init": spec}, name=name)
        self.params[name] = n
        _OWNERS[n.id] = self
        return n

    def buffer(self, name: str, shape, fill: float = 0.0) -> Node:
        """Declare non-trainable state (e.g. running statistics): read by every pass, changed only
        by ``step``, to the value given with ``assign``; saved and loaded with the weights.

        Args:
            name: its name in ``tr.buffers`` and in weights files.
            shape: its full shape (no batch axis).
            fill: its initial value, in every entry.
        """
        self._claim(name, "buffer")
        shape = _check_shape(shape, f"buffer {name!r}")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or fill != fill or abs(fill) == float("inf"):
            raise SymbpError(f"buffer {name!r}: fill must be a finite number, got {fill!r}")
        n = Node("buffer", (), shape, "float", {"fill": float(fill)}, name=name)
        self.buffers[name] = n
        _OWNERS[n.id] = self
        return n

    def assign(self, buffer: Node, value: Node) -> None:
        """Make every ``step`` replace ``buffer`` by ``value``, computed in training mode from the
        step's batch and the buffer's old value (no gradient flows through it)."""
        _check_node(value, "assign")
        if not isinstance(buffer, Node) or buffer.op != "buffer" or self.buffers.get(buffer.name) is not buffer:
            raise SymbpError(f"model {self.name!r}: assign() takes a buffer declared with m.buffer, "
                             f"got {buffer.describe() if isinstance(buffer, Node) else type(buffer).__name__}")
        if value.shape != buffer.shape or value.dtype != "float":
            raise SymbpError(f"model {self.name!r}: buffer {buffer.name!r} has shape {fmt_shape(buffer.shape)}; "
                             f"cannot assign it a value of shape {fmt_shape(value.shape)}")
        if buffer.name in self.updates:
            raise SymbpError(f"model {self.name!r}: buffer {buffer.name!r} is assigned twice")
        if any(n.op == "input" and "role" in n.attrs for n in topo_order([value])):  # a step's placeholder
            raise SymbpError(f"model {self.name!r}: buffer {buffer.name!r} cannot be updated from inside a "
                             "recurrence (an sb.scan step): one value per step has no place to go; normalise "
                             "outside the loop (or use LayerNorm inside it)")
        self.updates[buffer.name] = value

    def layer_name(self, kind: str) -> str:
        """A fresh name for an unnamed layer of this kind: dense1, dense2, ... per model."""
        self._layers = getattr(self, "_layers", {})
        k = self._layers.get(kind, 0)
        while True:
            k += 1
            name = f"{kind}{k}"
            if not any(p == name or p.startswith(name + "_") for p in (*self.params, *self.inputs, *self.buffers)):
                self._layers[kind] = k
                return name

    def output(self, name: str, value: Node) -> Node:
        """Name a prediction output (returned by ``tr.predict``)."""
        self._claim(name, "output")
        _check_node(value, f"output {name!r}")
        self.outputs[name] = value
        return value

    def minimize(self, loss: Node) -> Node:
        """Set the scalar to minimise. Losses from symbp already average over the batch."""
        _check_node(loss, "minimize")
        if loss.shape != ():
            raise SymbpError(f"model {self.name!r}: the loss must be a scalar, got shape {fmt_shape(loss.shape)}; "
                             "reduce it, e.g. with sb.mean(...)")
        self.loss = loss
        return loss

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, inputs={list(self.inputs)}, params={list(self.params)}, "
                f"loss={'set' if self.loss is not None else 'unset'})")


def model_of(x: Node, what: str) -> Model:
    """The model whose inputs and parameters ``x`` is computed from (for ``layer(x)``).

    Args:
        x: a tensor, possibly a scan step's placeholder (followed to the sequence it steps over).
        what: who asks, for errors (e.g. "layer 'fc1'").
    Returns:
        The one Model; raises SymbpError if ``x`` reads none, or the tensors of two.
    """
    found: dict[int, Model] = {}
    seen: set[int] = set()
    stack = [x]
    while stack:  # iterative: deep graphs (long unrolled sequences) must not hit the recursion limit
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        owner = _OWNERS.get(n.id)
        if owner is not None:
            found[id(owner)] = owner
            continue
        src = traced_from(n)
        stack.extend(n.inputs if src is None else (*n.inputs, src))
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise SymbpError(f"{what}: cannot tell which model its input ({x.describe()}) belongs to: it is computed "
                         "from no model's input or parameter; call the layer as layer(m, x)")
    names = " and ".join(repr(m.name) for m in found.values())
    raise SymbpError(f"{what}: {x.describe()} is computed from tensors of several models ({names}); "
                     "call the layer as layer(m, x)")


def _check_shape(shape, what: str) -> tuple:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise SymbpError(f"{what}: shape must be a tuple of positive ints, got {shape!r}") from None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise SymbpError(f"{what}: shape must be a tuple of positive ints, got {shape!r}")
    return shape


def _check_node(value, what: str) -> None:
    if not isinstance(value, Node):
        raise SymbpError(f"{what}: expected a symbolic tensor, got {type(value).__name__}")
