"""Regularisation layers: dropout.

    h = sb.layers.Dropout(0.5, name="drop1")(h)     # training: new mask every step; inference: h
"""

from __future__ import annotations

from symbp.ir import Node
from symbp.layers.base import Layer
from symbp.ops.random import check_rate, dropout


class Dropout(Layer):
    """Inverted dropout (``sb.dropout``): each element zeroed with probability ``rate`` and the
    rest scaled by 1 / (1 - rate) in training mode (``step``, ``loss``, ``gradients``); the
    identity in inference mode (``predict``, ``evaluate``).

    Args:
        rate: the fraction of elements dropped, in [0, 1).
        name: names the mask (``M_<name>`` in the equations).
    """

    def __init__(self, rate: float, name: str | None = None):
        super().__init__(name)
        self.rate = check_rate(rate, f"layer {self.name!r}")

    def apply(self, m, x: Node) -> Node:
        return dropout(x, self.rate, label=self.name)
