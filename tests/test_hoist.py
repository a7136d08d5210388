"""Loop-invariant hoisting (``symbp.ops.hoist``): what moves out of a scan's loop (products before
the forward loop, weight gradients after the reverse one), and that the hoisted loops compute
what the plain ones do (``SYMBP_HOIST=0``), on both backends, with masks, overlapping truncation
windows, stateful carries, go_backwards and initial states. Seen failing with the hoisted
sequence reversed, and (each backend) with the stacked cotangents copied instead of accumulated."""

import numpy as np
import pytest

import symbp as sb
from symbp.ir import topo_order

F, H, T, B, V = 3, 4, 5, 2, 6


def _model():
    """One model using every way a loop's carry can be handled, and a hand-written step whose
    carry-independent part is more than a product (an elementwise function of x_t before it,
    a bias after it) and whose per-step output reads only x_t."""
    m = sb.Model("hoist")
    x, mask, y = m.input("x", (T, F)), m.input("mask", (T,)), m.input("y", (T,), dtype="int64")
    h0 = m.input("h0", (H,))
    hs = sb.layers.LSTM(H, truncate=(2, 3), name="lstm")(x, mask=mask, initial_state=(h0, h0 * 0.5))
    hs = sb.layers.GRU(H, go_backwards=True, name="gru")(hs)
    hs = sb.layers.SimpleRNN(H, stateful=True, truncate=(3, 2), name="rnn")(hs)
    Wu, Wy, Wr, c = m.param("Wu", (H, H)), m.param("Wy", (H, H)), m.param("Wr", (H, H)), m.param("c", (H,))

    def step(h, u):
        return sb.tanh(sb.tanh(2.0 * u) @ Wu + c + h @ Wr), u @ Wy

    _, ys = sb.scan(step, hs, sb.zeros((H,)), label="mine")
    m.minimize(sb.softmax_cross_entropy(ys @ m.param("Wo", (H, V)), y))
    m.output("ys", ys)
    return m


def _batch():
    rng = np.random.default_rng(5)
    mask = np.ones((B, T))
    mask[0, 3:] = 0.0
    return {"x": rng.normal(size=(B, T, F)), "mask": mask, "y": rng.integers(0, V, (B, T)),
            "h0": rng.normal(size=(B, H))}


def _scans(m):
    return {n.label: n for n in topo_order([m.loss]) if n.op == "scan"}


def test_carry_independent_products_leave_the_loop(monkeypatch):
    monkeypatch.setenv("SYMBP_HOIST", "1")
    scans = _scans(_model())
    captured = {k: {p.label for p in s.attrs["cell"].captured} for k, s in scans.items()}
    # x_t @ Wx (+ b where the cell adds it before the carry's term) is an input of the loop now
    assert captured == {"lstm": {"lstm_Wh", "lstm_b"}, "gru": {"gru_Wh"}, "rnn": {"rnn_Wh", "rnn_b"},
                        "mine": {"Wr"}}
    seqs = {k: [x.shape for x in s.inputs[:len(s.attrs["cell"].xs_in)]] for k, s in scans.items()}
    assert seqs == {"lstm": [(None, T), (None, T, 4 * H)], "gru": [(None, T, 3 * H)],
                    "rnn": [(None, T, H)], "mine": [(None, T, H), (None, T, H)]}
    # the reverse step's h_{t-1}^T dz_t: one product over the stacked steps after the reverse loop
    from symbp.ops.hoist import gradient_products

    cell = scans["lstm"].attrs["cell"]
    assert {cell.captured[j].label for j in gradient_products(cell, list(cell.d_captured))} == {"lstm_Wh"}
    monkeypatch.setenv("SYMBP_HOIST", "0")
    assert gradient_products(cell, list(cell.d_captured)) == {}
    assert all(len(s.attrs["cell"].captured) >= 3 for s in _scans(_model()).values())


@pytest.fixture(scope="module")
def reference():
    """The plain loops, NumPy backend: loss, gradients, and the same after two stateful steps."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMBP_HOIST", "0")
        return _run("numpy")


def _run(backend):
    tr = sb.compile(sb.derive(_model()), backend=backend, dtype="float64", seed=0,
                    optimizer=sb.optim.SGD(lr=0.1))
    batch = _batch()
    first = (tr.loss(**batch), tr.gradients(**batch))
    tr.step(**batch)
    tr.step(**batch)  # the stateful loop now starts from the carry the previous step left
    return first, (tr.loss(**batch), tr.gradients(**batch), tr.predict(**batch)["ys"], dict(tr.params))


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_hoisted_loops_match_the_plain_ones(backend, reference, monkeypatch):
    monkeypatch.delenv("SYMBP_CFLAGS", raising=False)  # Cython at the flags users get (-O3 -march=native)
    monkeypatch.setenv("SYMBP_HOIST", "1")
    (loss0, g0), (loss2, g2, ys, params) = _run(backend)
    (rloss0, rg0), (rloss2, rg2, rys, rparams) = reference
    assert loss0 == pytest.approx(rloss0, rel=1e-12, abs=0)
    assert loss2 == pytest.approx(rloss2, rel=1e-12, abs=0)
    for got, ref in ((g0, rg0), (g2, rg2), (params, rparams)):
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(ys, rys, rtol=0, atol=1e-12)


def test_long_products_of_hoisted_gradients_match_numpy(monkeypatch):
    """A weight gradient summed over T*B rows is a product with a long k (T*B): the Cython
    kernel runs it in blocks of k (codegen/cython/printer.py, SB_KC = 128 in float64); here
    k = 300 = 2 blocks and a part, forward (x @ W, k = 300 features) and backward (x^T d, k = B)."""
    monkeypatch.delenv("SYMBP_CFLAGS", raising=False)
    m = sb.Model("long_k")
    x, c = m.input("x", (300,)), m.input("c", (32,))
    m.minimize(sb.sum(sb.tanh(x @ m.param("W", (300, 32))) * c))
    rng = np.random.default_rng(1)
    batch = {"x": rng.normal(size=(290, 300)), "c": rng.normal(size=(290, 32))}
    got, ref = (sb.compile(sb.derive(m), backend=b, dtype="float64", seed=0).gradients(**batch)
                for b in ("cython", "numpy"))
    np.testing.assert_allclose(got["W"], ref["W"], rtol=1e-12, atol=1e-12)


def _odd_cells():
    """Steps hoisting must read right: two sequences whose products meet in one sum, a hoisted
    value that is also the step's output, and a per-example context (batch, F) scaling x_t
    before its product, which has no time axis and so keeps that product in the loop."""
    m = sb.Model("odd")
    a, b, ctx = m.input("a", (T, F)), m.input("b", (T, H)), m.input("ctx", (F,))
    Wa, Wb, Wh, Wc = m.param("Wa", (F, H)), m.param("Wb", (H, H)), m.param("Wh", (H, H)), m.param("Wc", (F, H))

    def two(h, xs):
        u = xs[0] @ Wa + xs[1] @ Wb
        return sb.tanh(u + h @ Wh), u

    def scaled(h, x):
        return sb.tanh((x * ctx) @ Wc + h @ Wh), h

    _, us = sb.scan(two, (a, b), sb.zeros((H,)), label="two")
    _, hs = sb.scan(scaled, a, sb.zeros((H,)), label="scaled")
    m.minimize(sb.sum(us * us) + sb.sum(sb.tanh(hs)))
    return m


def test_odd_cells(monkeypatch):
    rng = np.random.default_rng(2)
    batch = {"a": rng.normal(size=(B, T, F)), "b": rng.normal(size=(B, T, H)), "ctx": rng.normal(size=(B, F))}
    got = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("SYMBP_HOIST", flag)
        m = _odd_cells()
        got[flag] = sb.compile(sb.derive(m), dtype="float64", seed=0).gradients(**batch)
    monkeypatch.setenv("SYMBP_HOIST", "1")
    scans = _scans(_odd_cells())
    assert [x.shape for x in scans["two"].inputs[:len(scans["two"].attrs["cell"].xs_in)]] == [(None, T, H)]
    assert {p.label for p in scans["scaled"].attrs["cell"].captured} == {"Wc", "Wh", "ctx"}
    for k in got["0"]:
        np.testing.assert_allclose(got["1"][k], got["0"][k], rtol=0, atol=1e-12, err_msg=k)
