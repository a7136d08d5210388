"""Convolutional layers, residual blocks and layer normalisation (re-exported by symbp.layers).

Images are channels last, (batch, H, W, C), as in ``symbp.conv``:

    net = sb.layers.Sequential([
        sb.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
        sb.layers.MaxPool2D(2, name="p1"),
        sb.layers.Flatten(name="flat"),
        sb.layers.Dense(10, name="out"),
    ])
"""

from __future__ import annotations

from symbp import conv, nn
from symbp import elementwise as E
from symbp import structural as St
from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers import Layer, Sequential
from symbp.layers import activation as activation_fn


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


class LayerNorm(Layer):
    """Normalise each example over ``axes`` to zero mean and unit variance, then scale and shift.

    y = (x - mean) / sqrt(var + eps) * gamma + beta, gamma and beta of the last axis's size.
    The variance is the mean of squared deviations from the mean (two passes), never
    E[x^2] - E[x]^2, which cancels catastrophically when the mean is large.

    Args:
        axes: the per-example axes to normalise over (default: the last axis only);
            negative axes count from the end, and the batch axis cannot be one of them.
        eps: added to the variance.
    """

    def __init__(self, axes=(-1,), eps: float = 1e-5, name: str | None = None):
        super().__init__(name)
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)
        if not self.axes or not isinstance(eps, (int, float)) or eps <= 0:
            raise SymbpError(f"layer {self.name!r}: needs at least one axis and eps > 0")
        self.eps = float(eps)

    def apply(self, m, x: Node) -> Node:
        where = f"layer {self.name!r}"
        if x.dtype != "float" or x.shape[-1] is None:
            raise SymbpError(f"{where}: expects float features on the last axis, got {fmt_shape(x.shape)}")
        axes = St.norm_axes(x, self.axes, where)
        if any(x.shape[a] is None for a in axes):
            raise SymbpError(f"{where}: cannot normalise over the batch axis (axes {self.axes})")
        mu = nn.mean(x, axes, keepdims=True)
        xc = E.sub(x, mu)
        var = nn.mean(E.mul(xc, xc), axes, keepdims=True)
        y = E.div(xc, E.sqrt(E.add(var, self.eps)))
        c = x.shape[-1]
        y = E.add(E.mul(y, m.param(f"{self.name}_gamma", (c,), init="ones")),
                  m.param(f"{self.name}_beta", (c,), init="zeros"))
        y.label = self.name
        return y
