"""The fully connected layer."""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers.base import Layer
from symbp.layers.base import activation as activation_fn


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
