"""Normalisation layers."""

from __future__ import annotations

import math

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers.base import Layer
from symbp.ops import elementwise as E
from symbp.ops import nn
from symbp.ops import structural as St
from symbp.ops.stats import batch_stat


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


class BatchNorm(Layer):
    """Normalise each feature over the batch (and, for NHWC conv features, over height and width).

    PyTorch's BatchNorm1d/2d: in training mode (``step``, ``loss``, ``gradients``)
    y = (x - mean_B) / sqrt(var_B + eps) * gamma + beta with the batch's mean and biased
    variance; in inference mode (``predict``, ``evaluate``) the running mean and variance
    instead. Each ``step`` updates them, running = (1 - momentum) * running + momentum * batch,
    the variance from the *unbiased* batch variance (n / (n - 1), n values per feature). They
    are buffers (``tr.buffers["<name>_mean"]``, ``"<name>_var"``): saved with the weights,
    never trained. gamma and beta (ones, zeros) are trained.

    Args:
        momentum: the weight of the new batch in the running statistics (PyTorch's meaning).
        eps: added to the variance.
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, name: str | None = None):
        super().__init__(name)
        for what, v in (("momentum", momentum), ("eps", eps)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 or what == "eps" and v == 0:
                raise SymbpError(f"layer {self.name!r}: {what} must be a number in "
                                 f"{'(0, 1]' if what == 'eps' else '[0, 1]'}, got {v!r}")
        self.momentum, self.eps = float(momentum), float(eps)

    def apply(self, m, x: Node) -> Node:
        where = f"layer {self.name!r}"
        if x.dtype != "float" or x.ndim not in (2, 4) or x.shape[0] is not None or None in x.shape[1:]:
            raise SymbpError(f"{where}: BatchNorm takes float dense features (batch, F) or NHWC conv features "
                             f"(batch, H, W, C), normalising every axis but the last; got {x.describe()} "
                             f"{fmt_shape(x.shape)}" + ("; reshape a sequence to (batch, T * F) or use LayerNorm"
                                                        if x.ndim == 3 else ""))
        axes, c = tuple(range(x.ndim - 1)), x.shape[-1]
        running_mean = m.buffer(f"{self.name}_mean", (c,), 0.0)
        running_var = m.buffer(f"{self.name}_var", (c,), 1.0)
        batch_mean = nn.mean(x, axes, keepdims=True)
        k = math.prod(x.shape[1:-1])  # values per feature in one example
        xc = E.sub(x, batch_stat(batch_mean, running_mean, self.name, k))
        batch_var = nn.mean(E.mul(xc, xc), axes, keepdims=True)  # biased, as torch normalises
        y = E.div(xc, E.sqrt(E.add(batch_stat(batch_var, running_var, self.name, k), self.eps)))
        y = E.add(E.mul(y, m.param(f"{self.name}_gamma", (c,), init="ones")),
                  m.param(f"{self.name}_beta", (c,), init="zeros"))
        y.label = self.name
        n = St.size(x, axes)  # values per feature in the batch: known when the batch arrives
        unbiased = E.mul(batch_var, E.div(n, E.sub(n, 1.0)))
        for buf, stat in ((running_mean, batch_mean), (running_var, unbiased)):
            m.assign(buf, E.add(E.mul(buf, 1.0 - self.momentum),
                                E.mul(St.reshape_batched(stat, (c,)), self.momentum)))
        return y
