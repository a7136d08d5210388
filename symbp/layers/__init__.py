"""Layers: sugar over the op library. Each layer creates named parameters in a model.

    net = sb.layers.Sequential([sb.layers.Dense(256, activation="relu", name="fc1"),
                                sb.layers.Dense(10, name="out")])
    logits = net(x)         # parameters fc1_W, fc1_b, out_W, out_b

Stage: the model API, after the op library. May import ``symbp.ir``, ``symbp.ops`` and
``symbp.model``; never ``symbp.autodiff``, ``symbp.show`` or ``codegen``.

To add a layer: a ``Layer`` subclass with ``apply(m, x)`` in the module of its family
(``dense``, ``conv``, ``norm``, ``dropout``, ``recurrent``, ``attention``; a new family gets
a new module), built only from op functions, then export it below.
"""

from symbp.layers.attention import Attention
from symbp.layers.base import ACTIVATIONS, Layer, Residual, Sequential, activation
from symbp.layers.conv import AvgPool2D, Conv2D, Flatten, GlobalAvgPool2D, MaxPool2D
from symbp.layers.dense import Dense, Embedding
from symbp.layers.dropout import Dropout
from symbp.layers.norm import BatchNorm, LayerNorm
from symbp.layers.recurrent import GRU, LSTM, Bidirectional, Recurrent, SimpleRNN, masked_softmax_cross_entropy

__all__ = ["ACTIVATIONS", "Attention", "BatchNorm", "Bidirectional", "GRU", "LSTM", "AvgPool2D", "Conv2D", "Dense",
           "Dropout", "Embedding", "Flatten", "GlobalAvgPool2D", "Layer", "LayerNorm", "MaxPool2D", "Recurrent",
           "Residual", "Sequential", "SimpleRNN", "activation", "masked_softmax_cross_entropy"]
