"""Reductions, softmax family and losses, composed from registered ops.

These need no derivative rules of their own: the chain rule through their parts gives the
right (and stable) gradients. Stability comes from the composition: log-softmax subtracts
a max that carries no gradient, cross-entropy reads log-softmax directly (never log of a
softmax), and binary cross-entropy goes through the overflow-free softplus. CTC runs its
forward (alpha) recursion in log space as a ``scan``, so both backends and its gradient
come from the ops it is written with.
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.ops import elementwise as E
from symbp.ops import structural as St
from symbp.ops.scan import scan
from symbp.ops.sequence import einsum
from symbp.registry import OpDef, register


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


# -- CTC: connectionist temporal classification -------------------------------------------

# log(0) for impossible paths: finite, so masked entries and their gradients stay exact zeros
# (exp(_NEG - m) == 0) where -inf would give inf - inf = NaN; far below any real log-likelihood.
_NEG = -1e30


def _interleave(a: Node, b: Node) -> Node:
    """a0 b0 a1 b1 ... along the last axis: (None, ..., n) twice -> (None, ..., 2n)."""
    inner = a.shape[1:]
    pair = St.concat([St.reshape(a, (*inner, 1)), St.reshape(b, (*inner, 1))], -1)
    return St.reshape(pair, (*inner[:-1], 2 * inner[-1]))


def _lengths(lengths: Node, n: int, what: str) -> Node:
    """The one-hot of int64 ``lengths`` over 0..n, whose range check (in the generated code, which
    names the input) calls its values lengths of ``what``, not labels."""
    ends = St.onehot(lengths, n + 1)
    ends.attrs["lengths"] = what
    return ends


def _before(lengths: Node, n: int, label: str, what: str) -> Node:
    """A (None, n, 1) float mask, 1 where the position i < length (int64 lengths in 0..n).

    Int tensors reach floats only through a one-hot (range-checked where the generated code
    reads it, naming the input); the running "not ended yet" flag is a cumulative sum.
    """
    ends = St.reshape(_lengths(lengths, n, what)[:, :n], (n, 1))
    _, alive = scan(lambda a, end: (E.sub(a, end), E.sub(a, end)), ends, St.const(1.0, (None, 1)), label=label)
    return alive


def _ctc_labels_shape(inputs, classes):
    labels, lengths = inputs
    if labels.dtype != "int64" or lengths.dtype != "int64" or labels.ndim != 2 or lengths.ndim != 1:
        raise SymbpError(f"ctc_labels: needs int64 labels (batch, S) and lengths (batch,), got "
                         f"{labels.dtype} {fmt_shape(labels.shape)} and {lengths.dtype} {fmt_shape(lengths.shape)}")
    return labels.shape, "int64"


# The labels, unchanged, after a check in the generated code that no example has a blank (0)
# within its label length: the loss would read it as padding-free data and silently learn from
# a sequence with a blank in it. No gradient (ints). Random test labels would hold blanks, so its
# own tests are in tests/test_ctc.py.
register(OpDef("ctc_labels", "structural", shape=_ctc_labels_shape, vjp=None,
               sample={"tested_by": "tests/test_ctc.py"}, show=lambda a, n: a[0]))


def _ctc_check(logits, labels, logit_lengths, label_lengths) -> None:
    args = {"logits": logits, "labels": labels, "logit_lengths": logit_lengths, "label_lengths": label_lengths}
    for name, x in args.items():
        if not isinstance(x, Node):
            raise SymbpError(f"ctc_loss: {name} must be a symbolic tensor, got {type(x).__name__}")
    want = {"logits": ("float", 3, "(batch, T, classes)"), "labels": ("int64", 2, "(batch, S), padded"),
            "logit_lengths": ("int64", 1, "(batch,)"), "label_lengths": ("int64", 1, "(batch,)")}
    for name, (dtype, ndim, shape) in want.items():
        x = args[name]
        if x.dtype != dtype or x.ndim != ndim or x.shape[0] is not None or None in x.shape[1:]:
            raise SymbpError(f"ctc_loss: {name} {x.describe()} must be {dtype} of shape {shape}, "
                             f"got {x.dtype} {fmt_shape(x.shape)}")
    if logits.shape[2] < 2:
        raise SymbpError(f"ctc_loss: logits {logits.describe()} {fmt_shape(logits.shape)} need at least 2 "
                         "classes (class 0 is the blank)")
    if labels.shape[1] < 1:
        raise SymbpError(f"ctc_loss: labels {labels.describe()} {fmt_shape(labels.shape)} have no positions")


def ctc_loss(logits: Node, labels: Node, logit_lengths: Node, label_lengths: Node) -> Node:
    """Mean CTC loss with blank 0, as PyTorch's ``ctc_loss(reduction="mean")``.

    Each example's negative log-likelihood (over every alignment of its labels to its first
    ``logit_lengths`` steps) is divided by its label length (at least 1), then averaged over
    the batch. An impossible alignment (too few steps) gives a loss near 1e30, not inf.

    Args:
        logits: (batch, T, classes) unnormalised scores; log-softmax is applied inside.
        labels: int64 (batch, S) label sequences in 1..classes-1, padded past each length with
            any class index (0 works); values out of 0..classes-1, and a blank (0) within an
            example's label length, are errors naming the input.
        logit_lengths: int64 (batch,) steps used per example, 0..T.
        label_lengths: int64 (batch,) labels used per example, 0..S.
    Returns:
        A scalar: the mean over the batch of nll / max(label length, 1).
    """
    _ctc_check(logits, labels, logit_lengths, label_lengths)
    _, T, C = logits.shape
    S = labels.shape[1]
    lp = log_softmax(logits)                                     # (batch, T, C)
    labels = St.node("ctc_labels", (labels, label_lengths), classes=C)   # no blank within the lengths
    lab = St.onehot(labels, C)                                   # (batch, S, C)
    lp_lab = einsum("btc,bsc->bts", lp, lab)                     # log p of each label at each step
    blank = lp[:, :, 0:1]                                        # (batch, T, 1)
    # Emissions over the extended sequence blank, l1, blank, l2, ..., lS, blank: 2S+1 states.
    emit = St.concat([_interleave(E.add(blank, St.const(0.0, (None, T, S))), lp_lab), blank], -1)
    # A label may be reached from two states back (skipping a blank) unless it repeats the
    # label before it: repeated labels need a blank between them.
    zeros3 = St.const(0.0, (None, 3))
    if S > 1:
        differs = E.sub(1.0, sum(E.mul(lab[:, 1:], lab[:, :-1]), -1))
        skip = St.concat([zeros3, _interleave(differs, St.const(0.0, (None, S - 1)))], -1)
    else:
        skip = zeros3
    pad = St.const(_NEG, (None, 1))

    def step(alpha, x_t):
        e, alive = x_t
        a1 = St.concat([pad, alpha[:, :-1]], -1)
        a2 = E.where(skip, St.concat([pad, pad, alpha[:, :-2]], -1), _NEG)
        m = St.stop_gradient(E.maximum(alpha, E.maximum(a1, a2)))
        total = E.add(E.add(E.exp(E.sub(alpha, m)), E.exp(E.sub(a1, m))), E.exp(E.sub(a2, m)))
        new = E.add(E.add(m, E.log(total)), e)
        return E.where(alive, new, alpha), None    # past its length an example keeps its alpha

    # Before step 0 only state 0 is "reached" (log 1 = 0): step 0 then starts at blank or l1.
    start = St.concat([St.const(0.0, (None, 1)), St.const(_NEG, (None, 2 * S))], -1)
    # Names that make the equations read as the algorithm does.
    emit.label, skip.label, start.label = "ctc_emit", "ctc_skip", "ctc_start"
    alive = _before(logit_lengths, T, "ctc_time", f"ctc_loss's logits ({T} steps)")
    alpha, _ = scan(step, (emit, alive), start, label="ctc_alpha")
    # The paths end in the last label or the blank after it: states 2L-1 and 2L.
    ends = _lengths(label_lengths, S, f"ctc_loss's labels ({S} positions)")
    final = St.concat([_interleave(ends[:, :S], ends[:, 1:]), ends[:, S:]], -1)
    final.label = "ctc_final"
    nll = E.neg(logsumexp(E.where(final, alpha, _NEG), -1))
    n_labels = sum(_before(label_lengths, S, "ctc_labels", f"ctc_loss's labels ({S} positions)"), (1, 2))
    return mean(E.div(nll, E.maximum(n_labels, 1.0)))
