"""The fully connected layer, and the embedding lookup (a dense layer over one-hot ids)."""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers.base import Layer
from symbp.layers.base import activation as activation_fn
from symbp.ops.sequence import embedding


class Dense(Layer):
    """y = activation(x @ W + b), with W of shape (in, units).

    Args:
        units: output width.
        activation: name or callable (None: linear).
        use_bias: add the bias b (initialised to zeros).
        init: initialiser of W.
        name: prefix of the parameter names (``<name>_W``, ``<name>_b``).
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True, init: str = "glorot_uniform",
                 name: str | None = None):
        super().__init__(name)
        if not isinstance(units, int) or units < 1:
            raise SymbpError(f"layer {self.name!r}: units must be a positive int, got {units!r}")
        self.units, self.use_bias, self.init = units, use_bias, init
        self.activation = activation_fn(activation, f"layer {self.name!r}")
        self.params: dict = {}  # per model: calling the layer again shares its weights

    def apply(self, m, x: Node) -> Node:
        if x.ndim < 1 or x.shape[-1] is None:
            raise SymbpError(f"layer {self.name!r}: expects features on the last axis, got shape {fmt_shape(x.shape)}")
        if id(m) not in self.params:
            W = m.param(f"{self.name}_W", (x.shape[-1], self.units), init=self.init)
            b = m.param(f"{self.name}_b", (self.units,), init="zeros") if self.use_bias else None
            self.params[id(m)] = (W, b)
        W, b = self.params[id(m)]
        if x.shape[-1] != W.shape[0]:
            raise SymbpError(f"layer {self.name!r}: expects input width {W.shape[0]}, got {x.shape[-1]}")
        z = x @ W
        if b is not None:
            z = z + b
        return self.activate(z)


class Embedding(Layer):
    """y = W[ids]: one learned row of W, shape (vocabulary, width), per int64 id.

    A lookup, not a product with a one-hot: its cost follows the number of ids, not the
    vocabulary, and its gradient adds into the rows the ids picked.

    Args:
        vocabulary: the number of ids (each id in 0..vocabulary-1, checked when data arrives).
        width: the length of each row.
        init: initialiser of W (Keras's default: uniform in ±0.05).
        name: prefix of the parameter name (``<name>_W``).
    """

    def __init__(self, vocabulary: int, width: int, init: str = "uniform", name: str | None = None):
        super().__init__(name)
        for what, v in (("vocabulary", vocabulary), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SymbpError(f"layer {self.name!r}: {what} must be a positive int, got {v!r}")
        self.vocabulary, self.width, self.init = vocabulary, width, init
        self.params: dict = {}  # per model: calling the layer again shares its table

    def apply(self, m, ids: Node) -> Node:
        if ids.dtype != "int64":
            raise SymbpError(f"layer {self.name!r}: expects int64 ids, got {ids.describe()} of dtype {ids.dtype}; "
                             "declare it with m.input(..., dtype='int64')")
        if id(m) not in self.params:
            self.params[id(m)] = m.param(f"{self.name}_W", (self.vocabulary, self.width), init=self.init)
        out = embedding(ids, self.params[id(m)])
        out.label = self.name
        return out
