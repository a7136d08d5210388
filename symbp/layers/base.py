"""Layers: sugar over the functional core. Each creates named parameters in a model.

    net = sb.layers.Sequential([sb.layers.Dense(256, activation="relu", name="fc1"),
                                sb.layers.Dense(10, name="out")])
    logits = net(m, x)      # parameters fc1_W, fc1_b, out_W, out_b
"""

from __future__ import annotations

from symbp import ops
from symbp.ir import Node, SymbpError, check_identifier, fmt_shape

ACTIVATIONS = {
    None: None, "linear": None, "tanh": ops.tanh, "sigmoid": ops.sigmoid, "relu": ops.relu,
    "leaky_relu": ops.leaky_relu, "elu": ops.elu, "softplus": ops.softplus, "gelu": ops.gelu,
    "swish": ops.swish, "softmax": ops.softmax, "log_softmax": ops.log_softmax,
}


def activation(spec, where: str):
    """An activation by name (see ACTIVATIONS) or any callable Node -> Node."""
    if callable(spec):
        return spec
    if spec not in ACTIVATIONS:
        raise SymbpError(f"{where}: unknown activation {spec!r}; choose from "
                         f"{', '.join(k for k in ACTIVATIONS if k)} or pass a function")
    return ACTIVATIONS[spec]


class Layer:
    """Base class: ``layer(m, x)`` adds the layer's parameters to model ``m`` and applies it."""

    def __init__(self, name: str | None):
        # An unnamed layer is named by the model it is first applied to (dense1, dense2, ... in
        # the order of application), so building the same model twice gives the same names.
        self.auto_named = name is None
        self.name = type(self).__name__.lower() if name is None else check_identifier(name, "layer")

    def __call__(self, m, x: Node, *args, **kwargs) -> Node:
        if not isinstance(x, Node):
            raise SymbpError(f"layer {self.name!r}: expected a symbolic tensor input, got {type(x).__name__}")
        if self.auto_named:
            self.name = m.layer_name(type(self).__name__.lower())
            self.auto_named = False
        return self.apply(m, x, *args, **kwargs)

    def apply(self, m, x: Node) -> Node:
        raise NotImplementedError

    def activate(self, z: Node) -> Node:
        """``self.activation(z)`` (or z), labelled after the layer: ``<name>_z`` and ``<name>``."""
        z.label = f"{self.name}_z"
        if getattr(self, "activation", None) is None:
            return z
        h = self.activation(z)
        h.label = self.name
        return h


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
        self.activation = globals()["activation"](activation, f"layer {self.name!r}")
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


class Sequential(Layer):
    """Layers applied in order."""

    def __init__(self, layers, name: str | None = None):
        super().__init__(name)
        self.layers = list(layers)
        for layer in self.layers:
            if not isinstance(layer, Layer) and not callable(layer):
                raise SymbpError(f"Sequential {self.name!r}: {layer!r} is not a layer")

    def apply(self, m, x: Node) -> Node:
        for layer in self.layers:
            x = layer(m, x) if isinstance(layer, Layer) else layer(x)
        return x


from symbp.conv_layers import AvgPool2D, Conv2D, Flatten, GlobalAvgPool2D, LayerNorm, MaxPool2D, Residual  # noqa: E402,F401
from symbp.rnn import GRU, LSTM, SimpleRNN, masked_softmax_cross_entropy  # noqa: E402,F401 - recurrent layers, built on sb.scan
