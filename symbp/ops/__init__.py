"""The op library behind the registry, and every op function in one namespace.

- ``scalar``: SymPy functions of the elementwise ops, with output-form derivatives;
- ``elementwise``: elementwise ops, their formulas and fusion;
- ``structural``: matmul, reductions, reshapes, concat, broadcast, one-hot;
- ``indexing``: ``x[...]`` with NumPy's semantics over the reported shape (slice, unslice);
- ``conv``: convolution and pooling (NHWC) with their gradient ops;
- ``scan``: recurrences, a cell traced once and looped;
- ``hoist``: what a step computes without its carry, moved out of the loop (``SYMBP_HOIST=0``: off);
- ``sequence``: embedding lookups (gather, scatter-add), one-hot, argmax, batched einsum/``@``;
- ``stats``: running statistics (buffers) and the statistic that differs between modes;
- ``nn``: reductions with numpy's names, the softmax family and losses, from the ops above;
- ``random``: dropout, its masks drawn in the step from a counter-based generator (Philox).

This namespace is what ``Node`` operators use and ``symbp`` exports
(``from symbp.ops import *``), so a new op is exported by being imported here.

Stage: the first after the IR. May import ``symbp.ir``, ``symbp.registry`` and
``symbp.notation``; never the model API, ``symbp.show`` or ``codegen``. One lazy exception:
``scan`` derives its cell's backward with ``symbp.autodiff.derive.vjp`` when it traces.

To add an op: one ``register(OpDef(...))`` in the module of its kind (shape rule, SymPy
formula or vector-Jacobian rule, ``sample`` for the registry's tests, ``show``), a function
imported below, and an emitter in each backend's table (``codegen/<backend>/``).
"""

from symbp.ops.conv import avg_pool2d, conv2d, max_pool2d  # noqa: F401
from symbp.ops.elementwise import (  # noqa: F401
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
from symbp.ops.indexing import getitem  # noqa: F401
from symbp.ops.nn import (  # noqa: F401
    binary_cross_entropy_with_logits,
    ctc_loss,
    log_softmax,
    logsumexp,
    max,
    mean,
    mse,
    softmax,
    softmax_cross_entropy,
    sum,
)
from symbp.ops.random import dropout  # noqa: F401
from symbp.ops.scan import scan  # noqa: F401
from symbp.ops.sequence import argmax, einsum, embedding, one_hot  # noqa: F401
from symbp.ops.stats import batch_stat  # noqa: F401
from symbp.ops.structural import (  # noqa: F401
    concat,
    const,
    matmul,
    onehot,
    reshape,
    stop_gradient,
    transpose,
)
from symbp.ops.structural import const as constant  # noqa: F401


def zeros(shape):
    """A per-example constant of zeros, broadcast over the batch: shape (None, *shape)."""
    return const(0.0, (None, *tuple(shape)))


__all__ = sorted(k for k, v in globals().items() if callable(v) and not k.startswith("_") and k != "annotations")
