"""Normalisation layers."""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers.base import Layer
from symbp.ops import elementwise as E
from symbp.ops import nn
from symbp.ops import structural as St


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
