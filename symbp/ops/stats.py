"""Running statistics: non-trainable state that training updates and inference reads.

A *buffer* is a leaf holding model state that is not trained by the optimiser (BatchNorm's
running mean and variance, PyTorch's name for them). ``step`` replaces it with the value the
model assigned it (``Model.assign``); ``loss``, ``gradients`` and ``predict`` only read it.

``batch_stat(batch, running)`` is where the two modes part: in training mode it is the
statistic of the batch (and passes its gradient through), in inference mode the running
one, so a normalisation written with it derives like any composition of ops.
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.ops.structural import _leaf_shape, node, reshape_batched
from symbp.registry import OpDef, register

register(OpDef("buffer", "leaf", shape=_leaf_shape))


def _batch_stat_shape(inputs, per_example=1):
    batch, running = inputs
    k = running.ndim
    lead = batch.shape[:batch.ndim - k]
    if batch.dtype != "float" or running.dtype != "float" or k == 0 or batch.shape[batch.ndim - k:] != running.shape \
            or any(d != 1 for d in lead):
        raise SymbpError(f"batch_stat: the running statistic {running.describe()} {fmt_shape(running.shape)} "
                         f"must hold one value per entry of the batch statistic {fmt_shape(batch.shape)}, "
                         "which is reduced over the batch (leading axes of size 1)")
    return batch.shape, "float"


def _inference(nd: Node) -> Node:
    """The running statistic, shaped like the batch statistic it stands in for."""
    running = nd.inputs[1]
    return reshape_batched(running, nd.shape)


register(OpDef("batch_stat", "structural", shape=_batch_stat_shape,
               vjp=lambda nd, g: (g, None),
               inference=_inference,
               show=lambda args, nd: args[0],
               sample={"shapes": [(1, 3), (3,)], "attrs": {"per_example": 1}}))


def batch_stat(batch: Node, running: Node, label: str | None = None, per_example: int = 1) -> Node:
    """A statistic of the batch in training mode, ``running`` in inference mode.

    Args:
        batch: the statistic of the current batch, reduced over the batch axis (no None in
            its shape), e.g. a mean with ``keepdims=True``: (1, C) or (1, 1, 1, C).
        running: the running statistic (a buffer), its last axes matching ``batch``: (C,).
        label: the layer it belongs to, for errors and names.
        per_example: how many values of each entry one example gives (H * W for NHWC features):
            a batch must give more than one (``step`` checks it, naming ``label``).
    Returns:
        A tensor shaped like ``batch``; the gradient flows to ``batch`` only.
    """
    return node("batch_stat", (batch, running), label=label, per_example=int(per_example))
