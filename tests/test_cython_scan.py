"""Recurrences on the Cython backend against the NumPy backend: every recurrent model class
(SimpleRNN, LSTM, GRU, the hand-written shifting/swapping/rotating cells, truncation, masks,
stacked loops, tuple carries, a captured batch tensor, stateful loops) in one model per dtype,
so the whole file costs two compiles."""

from __future__ import annotations

import numpy as np
import pytest

import symbp as sb
from tests.test_cython import close
from tests.test_scan_cells import CELLS

pytest.importorskip("Cython")
F, H, V, T = 3, 4, 5, 6


def zoo() -> sb.Model:
    """Sixteen loops in one model, each with its own inputs and parameters; losses summed."""
    m = sb.Model("zoo")
    s = m.input("s", (T, F))
    mk = m.input("mk", (T,))
    yseq, ylast = m.input("y", (T,), dtype="int64"), m.input("yl", (), dtype="int64")
    losses = []
    layers = {"rnn": sb.layers.SimpleRNN, "lstm": sb.layers.LSTM, "gru": sb.layers.GRU}
    for kind, truncate, seq, mask in (("rnn", None, True, False), ("lstm", None, True, True),
                                      ("gru", None, False, False), ("rnn", (1, 1), True, False),
                                      ("lstm", (2, 3), True, False), ("gru", (3, 2), True, True),
                                      ("lstm", (4, 4), False, False)):
        name = f"{kind}_{len(losses)}"
        h = layers[kind](H, name=name, truncate=truncate, return_sequences=seq)(m, s, mask=mk if mask else None)
        logits = sb.layers.Dense(V, name=f"{name}_out")(m, h)
        losses.append(sb.softmax_cross_entropy(logits, yseq if seq else ylast))
    # the hand-written cells of tests.test_scan_cells (carries that shift, swap, rotate)
    for kind, truncate in (("shift", None), ("swap", (2, 3)), ("rotate", None), ("gelu", (3, 3))):
        W, U, Vm = m.param(f"{kind}_W", (F, H)), m.param(f"{kind}_U", (H, H)), m.param(f"{kind}_V", (H, H))
        step, nc = CELLS[kind](W, U, Vm)
        init = sb.zeros((H,)) if nc == 1 else tuple(sb.zeros((H,)) for _ in range(nc))
        last, hs = sb.scan(step, s, init, truncate=truncate, label=kind)
        total = last if nc == 1 else sum(last[1:], last[0])
        losses.append(sb.mean(total * total) + sb.mean(hs * hs))
    # stacked: a GRU over an LSTM's outputs, with a mask (gradients flow between loops)
    h1 = sb.layers.LSTM(H, name="st1", truncate=(2, 3))(m, s, mask=mk)
    h2 = sb.layers.GRU(H, name="st2", return_sequences=False)(m, sb.tanh(h1), mask=mk)
    losses.append(sb.mean(h2 * h2))
    # tuple carry, two sequences, tuple outputs and a batch-wide context read every step
    c = m.input("c", (H,))
    W, U = m.param("ctx_W", (F, H)), m.param("ctx_U", (H, H))
    ctx = sb.tanh(c @ m.param("ctx_C", (H, H)))

    def step(carry, xs):
        h, acc = carry
        x_t, u_t = xs
        h = sb.tanh(x_t @ W + h @ U + ctx) * u_t
        return (h, acc + h), (h, h * h)

    (hT, acc), (hs, sq) = sb.scan(step, (s, m.input("u", (T, 1))), (sb.zeros((H,)), sb.zeros((H,))))
    losses.append(sb.mean(hs) + sb.mean(sq) + sb.mean(acc * hT))
    # stateful: a loop carried across batches, and one over its outputs
    P = m.param("sf_W", (F, H))
    _, seq = sb.scan(lambda h, x: (sb.tanh(x @ P + h), sb.tanh(x @ P + h)), s, sb.zeros((H,)), stateful=True,
                     label="sf1")
    hs2, _ = sb.scan(lambda h, x: (sb.tanh(x @ P.T + 0.5 * h), None), seq, sb.zeros((F,)), stateful=True,
                     label="sf2", truncate=(2, 2))
    losses.append(sb.mean(hs2 * hs2))
    m.output("h2", h2)
    m.minimize(sum(losses[1:], losses[0]))
    return m


def zoo_batch(rng, b: int) -> dict:
    lengths = rng.integers(1, T + 1, b)
    return {"s": rng.normal(size=(b, T, F)), "mk": (np.arange(T)[None, :] < lengths[:, None]).astype(float),
            "y": rng.integers(0, V, (b, T)), "yl": rng.integers(0, V, b), "c": rng.normal(size=(b, H)),
            "u": rng.uniform(0.5, 1.5, (b, T, 1))}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_recurrence_matches_numpy(dtype, rng):
    d = sb.derive(zoo())
    kw = dict(dtype=dtype, seed=5, optimizer=sb.optim.Adam(lr=0.01, clip_norm=1.0))
    tn, tc = sb.compile(d, backend="numpy", **kw), sb.compile(d, backend="cython", **kw)
    batches = [zoo_batch(rng, 3), zoo_batch(rng, 5), zoo_batch(rng, 3)]  # buffers per batch size
    for batch in batches:
        close(tc.loss(**batch), tn.loss(**batch), dtype, "loss")
        gn, gc = tn.gradients(**batch), tc.gradients(**batch)
        for k in gn:
            close(gc[k], gn[k], dtype, f"gradient of {k}")
        close(tc.predict(**batch)["h2"], tn.predict(**batch)["h2"], dtype, "predict")
        nn, nc = tn.gradient_norms_through_time(**batch), tc.gradient_norms_through_time(**batch)
        assert sorted(nn) == sorted(nc) and len(nc) == 16
        for k in nn:
            close(nc[k], nn[k], dtype, f"gradient norms of {k}")
    # training steps advance the stateful loops alike (same batch size: the state is read)
    for batch in (batches[0], batches[2], batches[1], batches[0]):
        close(tc.step(**batch), tn.step(**batch), dtype, "step loss")
        assert sorted(tc.carries) == sorted(tn.carries) == ["sf1", "sf2"]
        for k, carries in tn.carries.items():
            for a, b in zip(tc.carries[k], carries):
                close(a, b, dtype, f"state of {k}")
    for k in tn.params:
        close(tc.params[k], tn.params[k], dtype, f"parameter {k} after the steps")
    close(tc.loss(**batches[0]), tn.loss(**batches[0]), dtype, "loss from the carried state")
    before = tc.carries["sf1"][0].copy()
    tc.loss(**batches[0]), tc.gradients(**batches[0])  # only steps advance the state
    np.testing.assert_array_equal(tc.carries["sf1"][0], before)
    tc.reset_state()
    tn.reset_state()
    close(tc.loss(**batches[0]), tn.loss(**batches[0]), dtype, "loss after reset_state")


def test_truncation_and_state_by_hand():
    """h_t = x_t + w h_{t-1}: the hand-computed numbers of tests.test_scan, on this backend."""
    m = sb.Model("lin")
    s = m.input("s", (4, 1))
    w = m.param("w", (1, 1), init=0.5)
    losses = []
    for k, truncate in enumerate(((1, 1), (2, 2), (4, 4), (2, 1), (1, 2))):
        _, hs = sb.scan(lambda h, x: (x + h @ w, x + h @ w), s, sb.zeros((1,)), truncate=truncate, label=f"l{k}")
        losses.append(sb.sum(hs) * float(10 ** (2 * k)))  # each loop's share of dw stays readable
    _, hs = sb.scan(lambda h, x: (x + h @ w, x + h @ w), s, sb.zeros((1,)), stateful=True, label="sf")
    m.minimize(sum(losses[1:], losses[0]) + sb.sum(hs) * 1e10)
    tr = sb.compile(sb.derive(m), backend="cython", dtype="float64", optimizer=sb.optim.SGD(lr=0.0))
    x = np.ones((1, 4, 1))
    expected = [4.25, 5.0, 5.75, 2.75, 5.5]
    assert tr.gradients(s=x)["w"][0, 0] == pytest.approx(sum(e * 10 ** (2 * k) for k, e in enumerate(expected))
                                                         + 5.75e10, rel=1e-14)
    base = sum(6.125 * 10 ** (2 * k) for k in range(5))
    assert tr.step(s=x) == pytest.approx(base + 6.125e10, rel=1e-14)
    assert tr.loss(s=x) == pytest.approx(base + 7.8828125e10, rel=1e-14)  # from h = 1.875
    tr.reset_state()
    assert tr.loss(s=x) == pytest.approx(base + 6.125e10, rel=1e-14)


def test_source_does_not_grow_with_T():
    import codegen
    from tests.test_scan import seq_model

    def source(T):
        spec = codegen.Spec(sb.derive(seq_model("lstm", T, (2, 3), name="long")), sb.optim.SGD(lr=0.1), "float32")
        return codegen.emit(spec, "cython")

    short, long = source(8), source(4096)
    assert short.count("\n") == long.count("\n") and len(long) - len(short) < 400
