"""Every op function in one namespace: what ``Node`` operators use and ``symbp`` exports
(``from symbp.ops import *``), so a new op is exported by being imported here."""

from symbp.conv import avg_pool2d, conv2d, max_pool2d  # noqa: F401
from symbp.elementwise import (  # noqa: F401
    abs,
    add,
    div,
    elu,
    exp,
    expm1,
    gelu,
    greater,
    leaky_relu,
    log,
    log1p,
    maximum,
    minimum,
    mul,
    neg,
    power,
    relu,
    sigmoid,
    softplus,
    sqrt,
    sub,
    swish,
    tanh,
    where,
)
from symbp.nn import (  # noqa: F401
    binary_cross_entropy_with_logits,
    log_softmax,
    logsumexp,
    max,
    mean,
    mse,
    softmax,
    softmax_cross_entropy,
    sum,
)
from symbp.scan import scan  # noqa: F401
from symbp.structural import (  # noqa: F401
    concat,
    const,
    getitem,
    matmul,
    onehot,
    reshape,
    stop_gradient,
    transpose,
)
from symbp.structural import const as constant  # noqa: F401


def zeros(shape):
    """A per-example constant of zeros, broadcast over the batch: shape (None, *shape)."""
    return const(0.0, (None, *tuple(shape)))


__all__ = sorted(k for k, v in globals().items() if callable(v) and not k.startswith("_") and k != "annotations")
