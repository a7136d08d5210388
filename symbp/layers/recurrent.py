"""Recurrent layers over ``sb.scan``: SimpleRNN, LSTM and GRU, and the Bidirectional wrapper.

    h = sb.layers.LSTM(64, name="lstm")(x)                       # x: (batch, T, F) -> (batch, T, 64)
    last = sb.layers.GRU(32, return_sequences=False)(x, mask=mk)  # mk: (batch, T), 1 = real step
    hs, (hT, cT) = sb.layers.LSTM(64, return_state=True)(x, initial_state=(h0, c0))
    hs, hT = sb.layers.GRU(64, return_state=True)(x, initial_state=h0)   # h0: (batch, 64)
    both = sb.layers.Bidirectional(sb.layers.LSTM(64))(x)        # (batch, T, 128)
    h = sb.layers.LSTM(64, dropout=0.2, recurrent_dropout=0.2)(x)  # one mask per sequence each
    deep = sb.layers.Sequential([sb.layers.LSTM(64), sb.layers.LSTM(64)])(x)   # stacked

Each layer's cell is traced once; its weights are shared across time. With a padding mask,
a padded step keeps the previous state, so the last state is the state at the last real step.
Dropout (training mode only) is variational (Gal & Ghahramani, 2016; Keras's): one mask per
sequence, the same at every step, on the inputs (``dropout``) and on the state that enters the
recurrent product h Wh (``recurrent_dropout``).
"""

from __future__ import annotations

from symbp import ops
from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers.base import Layer, activation
from symbp.ops.random import apply_mask, check_rate, dropout_mask
from symbp.ops.scan import scan
from symbp.ops.structural import reshape


class Recurrent(Layer):
    """Base class: ``layer(x, mask=None)`` scans the layer's cell over axis 1 of ``x``.

    Args:
        units: state width H.
        return_sequences: return every step's output (batch, T, H), else the last (batch, H).
        return_state: also return the final state: ``(output, state)``, where the state is hT
            ((hT, cT) for an LSTM), the state after the last real step when masked.
        go_backwards: run over the sequence from its last step to its first; the output is in
            that order too (Keras's meaning): the same as the layer applied to ``x[:, ::-1]``.
        truncate: (k1, k2) truncated BPTT (see ``sb.scan``).
        stateful: carry the final state into the next batch (``tr.reset_state()`` to start over).
        init: initialiser of the weight matrices.
        name: prefix of the parameter names and the loop's label.
        dropout: the fraction of input features dropped, one mask per sequence (training mode).
        recurrent_dropout: the fraction of the state h dropped where it enters h Wh, one mask per
            sequence (training mode); an LSTM's c and a GRU's state update keep all of h.

    Calling it: ``layer(x, mask=None, initial_state=None)``; ``initial_state`` is a tensor of
    shape (batch, H) (an LSTM's a pair (h0, c0)), zeros when None. Gradients flow into it.
    """

    n_gates = 1
    n_state = 1

    def __init__(self, units: int, return_sequences: bool = True, return_state: bool = False,
                 go_backwards: bool = False, truncate: tuple | None = None, stateful: bool = False,
                 init: str = "glorot_uniform", name: str | None = None, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0):
        super().__init__(name)
        if not isinstance(units, int) or units < 1:
            raise SymbpError(f"layer {self.name!r}: units must be a positive int, got {units!r}")
        self.units, self.return_sequences = units, return_sequences
        self.return_state, self.go_backwards = bool(return_state), bool(go_backwards)
        self.truncate, self.stateful, self.init = truncate, stateful, init
        self.dropout = check_rate(dropout, f"layer {self.name!r}: dropout")
        self.recurrent_dropout = check_rate(recurrent_dropout, f"layer {self.name!r}: recurrent_dropout")

    def apply(self, m, x: Node, mask: Node | None = None, initial_state=None):
        if x.ndim != 3 or x.shape[0] is not None:
            raise SymbpError(f"layer {self.name!r}: expects a sequence of shape (batch, T, features), "
                             f"got {fmt_shape(x.shape)}")
        if mask is not None and (not isinstance(mask, Node) or mask.shape != x.shape[:2]):
            raise SymbpError(f"layer {self.name!r}: the mask must have shape {fmt_shape(x.shape[:2])} "
                             f"(1 for real steps, 0 for padding)")
        init = self.initial_state() if initial_state is None else self.check_state(initial_state)
        if self.go_backwards:  # reversed in time, and the outputs stay in the order they were computed
            x, mask = x[:, ::-1], None if mask is None else mask[:, ::-1]
        H, F, k = self.units, x.shape[2], self.n_gates
        Wx = m.param(f"{self.name}_Wx", (F, k * H), init=self.init)
        Wh = m.param(f"{self.name}_Wh", (H, k * H), init=self.init)
        b = m.param(f"{self.name}_b", (k * H,), init="zeros")
        if self.dropout:  # one (batch, F) mask broadcast over time
            keep_x = dropout_mask((None, F), self.dropout, f"{self.name}_x")
            x = apply_mask(x, reshape(keep_x, (1, F)), label=f"{self.name}_x")
        # made outside the step, the mask is one of the loop's captured inputs: the same at every t
        keep_h = dropout_mask((None, H), self.recurrent_dropout, f"{self.name}_h") if self.recurrent_dropout else None

        def step(carry, inp):
            x_t, m_t = inp if mask is not None else (inp, None)
            if keep_h is None:
                new = self.cell(carry, x_t, Wx, Wh, b)
            else:
                h = carry[0] if isinstance(carry, tuple) else carry
                new = self.cell(carry, x_t, Wx, Wh, b, recurrent=apply_mask(h, keep_h, label=f"{self.name}_h"))
            if m_t is not None:  # padding keeps the previous state
                keep = reshape(m_t, (1,))
                new = tuple(keep * n + (1.0 - keep) * c for n, c in zip(new, carry)) \
                    if isinstance(new, tuple) else keep * new + (1.0 - keep) * carry
            h = new[0] if isinstance(new, tuple) else new
            return new, h

        last, seq = scan(step, x if mask is None else (x, mask), init, truncate=self.truncate,
                         stateful=self.stateful, label=self.name)
        out = seq if self.return_sequences else (last[0] if isinstance(last, tuple) else last)
        out.label = self.name
        return (out, last) if self.return_state else out

    def initial_state(self):
        from symbp.ops.structural import const

        return const(0.0, (None, self.units))

    def check_state(self, state):
        """The user's ``initial_state``, checked: one (batch, H) float tensor per carry."""
        parts = state if isinstance(state, (tuple, list)) else (state,)
        want = "a pair (h0, c0) of tensors" if self.n_state == 2 else "a tensor"
        if len(parts) != self.n_state or (self.n_state == 1 and isinstance(state, (tuple, list))):
            raise SymbpError(f"layer {self.name!r}: initial_state must be {want} of shape "
                             f"{fmt_shape((None, self.units))}, got {type(state).__name__} of {len(parts)}")
        for k, p in enumerate(parts):
            if not isinstance(p, Node) or p.shape != (None, self.units) or p.dtype != "float":
                got = f"{fmt_shape(p.shape)} ({p.dtype})" if isinstance(p, Node) else type(p).__name__
                raise SymbpError(f"layer {self.name!r}: initial_state{f' {k}' if self.n_state > 1 else ''} "
                                 f"must be a float tensor of shape {fmt_shape((None, self.units))}, got {got}")
        return tuple(parts) if self.n_state > 1 else parts[0]

    def cell(self, carry, x_t, Wx, Wh, b, recurrent=None):
        """One step: the new carry from ``carry`` and ``x_t``; ``recurrent`` (the state h with
        recurrent dropout applied, or None: h itself) is what multiplies Wh."""
        raise NotImplementedError


class SimpleRNN(Recurrent):
    """h_t = activation(x_t Wx + h_{t-1} Wh + b) (tanh by default)."""

    def __init__(self, units: int, activation="tanh", **kw):
        super().__init__(units, **kw)
        self.act = globals()["activation"](activation, f"layer {self.name!r}")

    def cell(self, h, x_t, Wx, Wh, b, recurrent=None):
        z = x_t @ Wx + (h if recurrent is None else recurrent) @ Wh + b
        return z if self.act is None else self.act(z)  # None: "linear"


class LSTM(Recurrent):
    """Gates [i, f, g, o] = x_t Wx + h Wh + b; c' = σ(f + forget_bias) c + σ(i) tanh(g); h' = σ(o) tanh(c')."""

    n_gates = 4
    n_state = 2

    def __init__(self, units: int, forget_bias: float = 1.0, **kw):
        super().__init__(units, **kw)
        self.forget_bias = float(forget_bias)

    def initial_state(self):
        z = super().initial_state()
        return (z, super().initial_state())

    def cell(self, carry, x_t, Wx, Wh, b, recurrent=None):
        h, c = carry
        H = self.units
        z = x_t @ Wx + (h if recurrent is None else recurrent) @ Wh + b
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = ops.sigmoid(f + self.forget_bias) * c + ops.sigmoid(i) * ops.tanh(g)
        h = ops.sigmoid(o) * ops.tanh(c)
        return (h, c)


class GRU(Recurrent):
    """z, r = σ(.), n = tanh(x Wn + b_n + r ⊙ (h Un)); h' = (1 - z) ⊙ n + z ⊙ h (reset after the product)."""

    n_gates = 3

    def cell(self, h, x_t, Wx, Wh, b, recurrent=None):
        H = self.units
        a = x_t @ Wx + b
        u = (h if recurrent is None else recurrent) @ Wh
        z = ops.sigmoid(a[:, 0:H] + u[:, 0:H])
        r = ops.sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
        n = ops.tanh(a[:, 2 * H:] + r * u[:, 2 * H:])
        return (1.0 - z) * n + z * h


class Bidirectional(Layer):
    """A recurrent layer run both ways, outputs concatenated on the feature axis.

    ``Bidirectional(LSTM(H, name="enc"))(x)`` runs ``enc`` forwards and a copy of it named
    ``enc_backward`` (its own weights) with ``go_backwards`` flipped; the backward outputs are
    put back in time order, so step t holds [forward h_t, backward h_t]: (batch, T, 2H), or
    (batch, 2H) with ``return_sequences=False`` (each direction's last step). With the layer's
    ``return_state=True`` it returns ``(output, forward state, backward state)``.

    Args:
        layer: a SimpleRNN, LSTM or GRU (not yet applied).
        name: the wrapper's name (the two directions keep the layer's).
    Calling it: ``wrapper(x, mask=None, initial_state=None)``, ``initial_state`` a pair
    (forward state, backward state).
    """

    def __init__(self, layer: Recurrent, name: str | None = None):
        super().__init__(name)
        if not isinstance(layer, Recurrent):
            raise SymbpError(f"layer {self.name!r}: Bidirectional wraps a recurrent layer (SimpleRNN, LSTM, GRU), "
                             f"got {type(layer).__name__}")
        self.layer = layer

    def apply(self, m, x: Node, mask: Node | None = None, initial_state=None):
        import copy

        if initial_state is not None and (not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2):
            raise SymbpError(f"layer {self.name!r}: initial_state must be a pair (forward state, backward state)")
        init = (None, None) if initial_state is None else initial_state
        fwd = self.layer(m, x, mask=mask, initial_state=init[0])
        back = copy.copy(self.layer)
        back.name, back.auto_named = f"{self.layer.name}_backward", False
        back.go_backwards = not self.layer.go_backwards
        bwd = back(m, x, mask=mask, initial_state=init[1])
        (f_out, f_state), (b_out, b_state) = (fwd, bwd) if self.layer.return_state else ((fwd, None), (bwd, None))
        if self.layer.return_sequences:
            b_out = b_out[:, ::-1]  # back in time order: step t of both directions side by side
        out = ops.concat([f_out, b_out], axis=-1)
        out.label = self.name
        return (out, f_state, b_state) if self.layer.return_state else out


def masked_softmax_cross_entropy(logits: Node, labels: Node, mask: Node) -> Node:
    """Cross-entropy averaged over the real steps only (mask 1) of padded sequences.

    Args:
        logits: (batch, T, classes).
        labels: int64 class indices (batch, T).
        mask: (batch, T), 1 for real steps, 0 for padding.
    Returns:
        The scalar sum(mask * CE) / sum(mask).
    """
    from symbp.ops import nn
    from symbp.ops.structural import onehot

    if logits.ndim != 3 or labels.shape != logits.shape[:2] or mask.shape != logits.shape[:2]:
        raise SymbpError(f"masked_softmax_cross_entropy: expects logits (batch, T, classes) and labels and mask "
                         f"(batch, T), got {fmt_shape(logits.shape)}, {fmt_shape(labels.shape)}, "
                         f"{fmt_shape(mask.shape)}")
    ce = -nn.sum(onehot(labels, logits.shape[2]) * nn.log_softmax(logits), axis=-1)
    return nn.sum(ce * mask) / nn.sum(mask)


__all__ = ["Bidirectional", "GRU", "LSTM", "Recurrent", "SimpleRNN", "activation", "masked_softmax_cross_entropy"]
