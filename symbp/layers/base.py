"""What every layer shares: the ``Layer`` base (naming, ``activate``), activations by name,
and the layers that compose others (``Sequential``, ``Residual``)."""

from __future__ import annotations

from symbp import ops
from symbp.ir import Node, SymbpError, check_identifier, fmt_shape
from symbp.model import Model, model_of
from symbp.ops import elementwise as E

ACTIVATIONS = {
    "linear": None, "tanh": ops.tanh, "sigmoid": ops.sigmoid, "relu": ops.relu,
    "leaky_relu": ops.leaky_relu, "elu": ops.elu, "softplus": ops.softplus, "gelu": ops.gelu,
    "swish": ops.swish, "softmax": ops.softmax, "log_softmax": ops.log_softmax,
}


def activation(spec, where: str):
    """An activation by name (see ACTIVATIONS), None (linear) or any callable Node -> Node."""
    if spec is None:  # not a key of ACTIVATIONS: its keys are names, so sorted() works on them
        return None
    if callable(spec):
        return spec
    if spec not in ACTIVATIONS:
        raise SymbpError(f"{where}: unknown activation {spec!r}; choose from "
                         f"{', '.join(ACTIVATIONS)} or pass a function")
    return ACTIVATIONS[spec]


class Layer:
    """Base class: ``layer(x)`` adds the layer's parameters to the model of ``x`` and applies it.

    ``layer(m, x)`` names the model explicitly (and keeps working); ``layer(x)`` finds it from
    the graph: the inputs and parameters ``x`` is computed from know their model.
    """

    def __init__(self, name: str | None = None):
        # An unnamed layer is named by the model it is first applied to (dense1, dense2, ... in
        # the order of application), so building the same model twice gives the same names.
        self.auto_named = name is None
        self.name = type(self).__name__.lower() if name is None else check_identifier(name, "layer")

    def __call__(self, *args, **kwargs) -> Node:
        """Apply the layer: ``layer(x, ...)`` or ``layer(m, x, ...)``.

        Args:
            args: optionally the Model, then the input tensor, then the layer's own arguments.
            kwargs: the layer's own keyword arguments (e.g. ``mask=`` of a recurrent layer).
        Returns:
            The layer's output tensor.
        """
        m = args[0] if args and isinstance(args[0], Model) else None
        args = args[1:] if m is not None else args
        if not args or not isinstance(args[0], Node):
            got = type(args[0]).__name__ if args else "nothing"
            raise SymbpError(f"layer {self.name!r}: expected a symbolic tensor input, got {got}")
        x, rest = args[0], args[1:]
        if m is None:
            m = model_of(x, f"layer {self.name!r}")
        if self.auto_named:
            self.name = m.layer_name(type(self).__name__.lower())
            self.auto_named = False
        return self.apply(m, x, *rest, **kwargs)

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


class Residual(Layer):
    """y = x + block(x): a skip connection around a layer (or a list of layers).

    The block must keep the shape of its input; a block that changes it (other channel
    count, stride, 'valid' padding) is an error rather than a silent broadcast.
    """

    def __init__(self, block, name: str | None = None):
        super().__init__(name)
        if isinstance(block, (list, tuple)):
            block = Sequential(block, name=f"{self.name}_block")
        if not isinstance(block, Layer) and not callable(block):
            raise SymbpError(f"layer {self.name!r}: the block must be a layer, a list of layers or a function")
        self.block = block

    def apply(self, m, x: Node) -> Node:
        y = self.block(m, x) if isinstance(self.block, Layer) else self.block(x)
        if not isinstance(y, Node) or y.shape != x.shape:
            got = fmt_shape(y.shape) if isinstance(y, Node) else type(y).__name__
            raise SymbpError(f"layer {self.name!r}: the residual block must keep the shape of its input "
                             f"{fmt_shape(x.shape)}, but it returns {got}; use 'same' padding, stride 1 "
                             "and as many filters as input channels")
        out = E.add(x, y)
        out.label = self.name
        return out
