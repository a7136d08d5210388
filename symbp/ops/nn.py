"""Reductions, softmax family and losses, composed from registered ops.

These need no derivative rules of their own: the chain rule through their parts gives the
right (and stable) gradients. Stability comes from the composition: log-softmax subtracts
a max that carries no gradient, cross-entropy reads log-softmax directly (never log of a
softmax), and binary cross-entropy goes through the overflow-free softplus.
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.ops import elementwise as E
from symbp.ops import structural as St


def sum(x: Node, axis=None, keepdims: bool = False) -> Node:  # noqa: A001 - numpy's name
    """Sum over ``axis`` (None: every axis, the batch axis included)."""
    axes = St.norm_axes(x, axis, "sum")
    return St.node("sum", (x,), axes=axes, keepdims=keepdims) if axes else x


def mean(x: Node, axis=None, keepdims: bool = False) -> Node:
    axes = St.norm_axes(x, axis, "mean")
    return E.div(sum(x, axes, keepdims), St.size(x, axes)) if axes else x


def max(x: Node, axis=None, keepdims: bool = False) -> Node:  # noqa: A001 - numpy's name
    axes = St.norm_axes(x, axis, "max")
    return St.node("max", (x,), axes=axes, keepdims=keepdims) if axes else x


def logsumexp(x: Node, axis=-1, keepdims: bool = False) -> Node:
    """log(sum(exp(x))) along ``axis``, shifted by the max so it cannot overflow."""
    axes = St.norm_axes(x, axis, "logsumexp")
    m = St.stop_gradient(max(x, axes, keepdims=True))
    s = E.log(sum(E.exp(E.sub(x, m)), axes, keepdims=True))
    out = E.add(s, m)
    return out if keepdims else St.reshape_batched(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def log_softmax(x: Node, axis=-1) -> Node:
    axes = St.norm_axes(x, axis, "log_softmax")
    return E.sub(x, logsumexp(x, axes, keepdims=True))


def softmax(x: Node, axis=-1) -> Node:
    axes = St.norm_axes(x, axis, "softmax")
    e = E.exp(E.sub(x, St.stop_gradient(max(x, axes, keepdims=True))))
    return E.div(e, sum(e, axes, keepdims=True))


def _per_example_mean(losses: Node) -> Node:
    """Mean over every axis: the batch (and time, for sequences)."""
    return mean(losses, None)


def softmax_cross_entropy(logits: Node, labels: Node) -> Node:
    """Mean cross-entropy of softmax(logits) against integer class labels or probabilities.

    Args:
        logits: (batch, ..., classes) scores.
        labels: int64 class indices shaped like ``logits`` without its class axis, or float
            probabilities shaped like ``logits``.
    Returns:
        A scalar: the mean over every axis but the class axis.
    """
    classes = logits.shape[-1]
    if labels.dtype == "int64":
        if labels.shape != logits.shape[:-1]:
            raise SymbpError(f"softmax_cross_entropy: labels {labels.describe()} {fmt_shape(labels.shape)} "
                             f"must have the shape of logits {fmt_shape(logits.shape)} without the class axis")
        target = St.onehot(labels, classes)
    else:
        if labels.shape != logits.shape:
            raise SymbpError(f"softmax_cross_entropy: probability targets {fmt_shape(labels.shape)} must "
                             f"have the shape of the logits {fmt_shape(logits.shape)}")
        target = labels
    per_example = E.neg(sum(E.mul(target, log_softmax(logits)), -1))
    return _per_example_mean(per_example)


def binary_cross_entropy_with_logits(logits: Node, targets: Node) -> Node:
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 (or soft) float targets."""
    if targets.dtype != "float":
        raise SymbpError("binary_cross_entropy_with_logits: targets must be float (0.0/1.0)")
    return _per_example_mean(E.apply("bce_logits", logits, targets))


def mse(pred: Node, target: Node) -> Node:
    """Mean squared error over every element."""
    return _per_example_mean(E.power(E.sub(pred, target), 2))
