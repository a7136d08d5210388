"""Attention over a source sequence: Luong dot and general, Bahdanau additive, with a padding mask.

    att = sb.layers.Attention("general", name="att")
    context, weights = att(dec, enc, mask=src_mask)   # dec (batch, Tq, D), enc (batch, S, D)
    context, weights = att(h_t, enc)                  # one decoder step: h_t (batch, D) -> (batch, D)

Scores per (query step, source position), a softmax over the source positions, and the context
is the weighted sum of the values. Built only from op functions, so the derivation, both
backends and the equations need nothing new.
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.layers.base import Layer
from symbp.model import model_of
from symbp.ops import elementwise as E
from symbp.ops.nn import softmax, sum
from symbp.ops.sequence import einsum, one_hot
from symbp.ops.structural import reshape

KINDS = ("dot", "general", "additive")

# What a masked score becomes: exp(-1e9 - max) is exactly 0 in float32 and float64, so padded
# positions get weight 0 and no gradient, and the value stays finite (no inf - inf = nan).
MASKED = -1e9


class Attention(Layer):
    """context, weights = attention of a query over keys (and values), softmax over the source axis.

    Scores: ``dot`` q·k (Luong; q and k of one width), ``general`` q·(W k) (Luong; W of shape
    (Dq, Dk)), ``additive`` v·tanh(Wq q + Wk k) (Bahdanau; Wq (Dq, units), Wk (Dk, units), v
    (units,)). Calling the layer again (e.g. at every decoder step) shares its parameters.

    Args:
        kind: "dot", "general" or "additive".
        units: width of the additive score's hidden layer (default: the keys' width).
        init: initialiser of the weight matrices.
        name: prefix of the parameter names (``<name>_W``; ``<name>_Wq``, ``<name>_Wk``, ``<name>_v``).

    Calling it: ``att(query, keys, values=None, mask=None)`` with query (batch, Tq, Dq) or
    (batch, Dq) for one step, keys (batch, S, Dk), values (batch, S, Dv) (the keys when None),
    mask (batch, S), 1 for real source positions and 0 for padding (float, or int64 0/1).
    Returns ``(context, weights)``: (batch, Tq, Dv) and (batch, Tq, S), or (batch, Dv) and
    (batch, S) for a one-step query. A query whose every position is masked attends uniformly.
    """

    def __init__(self, kind: str = "dot", units: int | None = None, init: str = "glorot_uniform",
                 name: str | None = None):
        super().__init__(name)
        if kind not in KINDS:
            raise SymbpError(f"layer {self.name!r}: unknown attention kind {kind!r}; choose from {', '.join(KINDS)}")
        if units is not None and (not isinstance(units, int) or isinstance(units, bool) or units < 1):
            raise SymbpError(f"layer {self.name!r}: units must be a positive int, got {units!r}")
        if units is not None and kind != "additive":
            raise SymbpError(f"layer {self.name!r}: units is the width of the additive score; {kind!r} has none")
        self.kind, self.units, self.init = kind, units, init
        self.params: dict = {}  # per model: calling the layer again shares its weights

    def __call__(self, *args, **kwargs):
        """Apply the layer: ``att(query, keys, ...)`` or ``att(m, query, keys, ...)``.

        Args:
            args: optionally the Model, then query, keys, values and mask (see the class).
            kwargs: ``values=``, ``mask=``.
        Returns:
            ``(context, weights)``.
        """
        if len(args) >= 2 and all(isinstance(a, Node) for a in args[:2]):
            try:
                model_of(args[0], f"layer {self.name!r}")
            except SymbpError:
                # A decoder's query is often its loop's carry, which starts from sb.zeros and so
                # reads no model's tensor; the keys (encoder outputs) do.
                return super().__call__(model_of(args[1], f"layer {self.name!r}"), *args, **kwargs)
        return super().__call__(*args, **kwargs)

    def apply(self, m, query: Node, keys: Node, values: Node | None = None, mask: Node | None = None):
        one_step = isinstance(query, Node) and query.ndim == 2
        q = self._check(query, "query", (2, 3))
        k = self._check(keys, "keys", (3,))
        v = k if values is None else self._check(values, "values", (3,))
        if v.shape[1] != k.shape[1]:
            raise SymbpError(f"layer {self.name!r}: values {fmt_shape(v.shape)} and keys {fmt_shape(k.shape)} "
                             "must have the same number of source positions (axis 1)")
        if one_step:
            q = reshape(q, (1, q.shape[1]))
        scores = self._scores(m, q, k)                      # (batch, Tq, S)
        if mask is not None:
            scores = E.where(self._mask(mask, k.shape[1]), scores, MASKED)
        scores.label = f"{self.name}_scores"
        weights = softmax(scores, -1)
        context = einsum("bts,bsd->btd", weights, v)
        if one_step:
            context, weights = reshape(context, (v.shape[2],)), reshape(weights, (k.shape[1],))
        context.label, weights.label = self.name, f"{self.name}_weights"
        return context, weights

    def _check(self, x, what: str, ranks: tuple) -> Node:
        want = " or ".join(("(batch, D)", "(batch, T, D)")[r - 2] for r in ranks)
        if not isinstance(x, Node):
            raise SymbpError(f"layer {self.name!r}: {what} must be a symbolic tensor {want}, got {type(x).__name__}")
        if x.dtype != "float" or x.ndim not in ranks or x.shape[0] is not None or None in x.shape[1:]:
            raise SymbpError(f"layer {self.name!r}: {what} must be a float tensor {want}, "
                             f"got {x.describe()} {fmt_shape(x.shape)} of dtype {x.dtype}")
        return x

    def _mask(self, mask, sources: int) -> Node:
        """The mask as float 0/1 of shape (batch, 1, S), to broadcast over the query steps."""
        if not isinstance(mask, Node) or mask.shape != (None, sources):
            got = fmt_shape(mask.shape) if isinstance(mask, Node) else type(mask).__name__
            raise SymbpError(f"layer {self.name!r}: the mask must have shape {fmt_shape((None, sources))} "
                             f"(1 for real source positions, 0 for padding), got {got}")
        if mask.dtype == "int64":  # via a one-hot: any id other than 0/1 is a range error naming the input
            mask = one_hot(mask, 2)[..., 1]
        return reshape(mask, (1, sources))

    def _param(self, m, suffix: str, shape: tuple) -> Node:
        got = self.params.setdefault(id(m), {})
        if suffix not in got:
            got[suffix] = m.param(f"{self.name}_{suffix}", shape, init=self.init)
        p = got[suffix]
        if p.shape != shape:
            raise SymbpError(f"layer {self.name!r}: its {suffix} was made for widths {fmt_shape(p.shape)} "
                             f"and is now applied to widths {fmt_shape(shape)}")
        return p

    def _scores(self, m, q: Node, k: Node) -> Node:
        dq, dk = q.shape[2], k.shape[2]
        if self.kind == "dot":
            if dq != dk:
                raise SymbpError(f"layer {self.name!r}: dot attention needs query and keys of one width, "
                                 f"got {dq} and {dk}; use kind='general' or 'additive' for different widths")
            return einsum("btd,bsd->bts", q, k)
        if self.kind == "general":
            return einsum("btd,bsd->bts", q @ self._param(m, "W", (dq, dk)), k)
        units = self.units or dk
        wq = q @ self._param(m, "Wq", (dq, units))          # (batch, Tq, units)
        wk = k @ self._param(m, "Wk", (dk, units))          # (batch, S, units)
        hidden = E.tanh(E.add(reshape(wq, (q.shape[1], 1, units)), reshape(wk, (1, k.shape[1], units))))
        return sum(E.mul(hidden, self._param(m, "v", (units,))), -1)
