"""Convolutional layers: 2-D convolution, pooling, and flattening to features.

Images are channels last, (batch, H, W, C), as in ``symbp.ops.conv``:

    net = sb.layers.Sequential([
        sb.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
        sb.layers.MaxPool2D(2, name="p1"),
        sb.layers.Flatten(name="flat"),
        sb.layers.Dense(10, name="out"),
    ])
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers.base import Layer
from symbp.layers.base import activation as activation_fn
from symbp.ops import conv, nn
from symbp.ops import structural as St


class Conv2D(Layer):
    """y = activation(conv2d(x, W) + b), W of shape (kh, kw, C_in, filters).

    Args:
        filters: output channels.
        kernel_size: an int or (kh, kw).
        strides: an int or (sh, sw).
        padding: "valid" or "same".
        activation: name or callable (None: linear).
        use_bias: add b (filters,), initialised to zeros.
        init: initialiser of W (fans: kh*kw*C_in in, kh*kw*filters out).
        name: prefix of the parameter names (``<name>_W``, ``<name>_b``).
    """

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "valid", activation=None,
                 use_bias: bool = True, init: str = "glorot_uniform", name: str | None = None):
        super().__init__(name)
        where = f"layer {self.name!r}"
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise SymbpError(f"{where}: filters must be a positive int, got {filters!r}")
        if padding not in ("valid", "same"):
            raise SymbpError(f"{where}: padding must be 'valid' or 'same', got {padding!r}")
        self.filters, self.padding, self.use_bias, self.init = filters, padding, use_bias, init
        self.kernel_size = conv.int_pair(kernel_size, "kernel_size", where)
        self.strides = conv.int_pair(strides, "strides", where)
        self.activation = activation_fn(activation, where)

    def apply(self, m, x: Node) -> Node:
        conv.check_image(x, f"layer {self.name!r}")
        # Check the geometry before creating parameters, so a bad layer leaves the model clean.
        pads = conv.same_pads(x.shape[1:3], self.kernel_size, self.strides) if self.padding == "same" \
            else ((0, 0), (0, 0))
        conv.window_counts(x.shape[1:3], self.kernel_size, self.strides, pads, f"layer {self.name!r}")
        W = m.param(f"{self.name}_W", (*self.kernel_size, x.shape[3], self.filters), init=self.init)
        z = conv.conv2d(x, W, self.strides, self.padding, name=self.name)
        if self.use_bias:
            z = z + m.param(f"{self.name}_b", (self.filters,), init="zeros")
        return self.activate(z)


class MaxPool2D(Layer):
    """Max over (pool_size) windows, no padding; the windows must tile the input.

    Args:
        pool_size: an int or (ph, pw).
        strides: an int or (sh, sw); default: pool_size.
    """

    op = staticmethod(conv.max_pool2d)

    def __init__(self, pool_size=2, strides=None, name: str | None = None):
        super().__init__(name)
        where = f"layer {self.name!r}"
        self.pool_size = conv.int_pair(pool_size, "pool_size", where)
        self.strides = self.pool_size if strides is None else conv.int_pair(strides, "strides", where)

    def apply(self, m, x: Node) -> Node:
        return self.op(x, self.pool_size, self.strides, name=self.name)


class AvgPool2D(MaxPool2D):
    """Mean over (pool_size) windows; arguments as for MaxPool2D."""

    op = staticmethod(conv.avg_pool2d)


class GlobalAvgPool2D(Layer):
    """Mean over height and width: (batch, H, W, C) -> (batch, C)."""

    def apply(self, m, x: Node) -> Node:
        conv.check_image(x, f"layer {self.name!r}")
        y = nn.mean(x, (1, 2))
        y.label = self.name
        return y


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1*d2*...), in row-major (H, W, C) order."""

    def apply(self, m, x: Node) -> Node:
        if x.shape[:1] != (None,) or None in x.shape[1:]:
            raise SymbpError(f"layer {self.name!r}: expects the batch axis first, got {fmt_shape(x.shape)}")
        return St.reshape(x, -1) if x.ndim > 2 else x
