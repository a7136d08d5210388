"""Training and inference mode (symbp.autodiff.modes): loss/gradients/step run the graph as built,
predict/evaluate its inference form, on both backends."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import symbp as sb
from symbp.autodiff.modes import inference_form
from symbp.ir import topo_order
from symbp.registry import OPS

T, F, H = 4, 3, 5


def _model(name: str, probe):
    """A recurrence and a dense head where ``probe`` marks what changes in inference mode."""
    m = sb.Model(name)
    s = m.input("s", (T, F))
    y = m.input("y", (), dtype="int64")
    Wx, Wh = m.param("Wx", (F, H)), m.param("Wh", (H, H))

    def step(h, x_t):
        h = sb.tanh(x_t @ Wx + probe(h) @ Wh)
        return h, h

    hT, _ = sb.scan(step, s, sb.zeros((H,)), label="rnn")
    logits = probe(hT) @ m.param("Wo", (H, 3))
    m.output("logits", logits)
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return sb.derive(m)


@pytest.fixture
def doubling(monkeypatch):
    """Make stop_gradient an op whose inference form doubles its input: training mode keeps it
    (the identity forward), inference mode must show the factor 2."""
    od = OPS["stop_gradient"]
    monkeypatch.setitem(OPS, "stop_gradient", dataclasses.replace(od, inference=lambda n: n.inputs[0] * 2.0))


def test_inference_form_keeps_nodes_without_rewrites(rng):
    d = _model("modes_plain", lambda h: h)
    roots = [d.loss, *d.outputs.values()]
    assert all(a is b for a, b in zip(inference_form(roots), roots))
    tr = sb.compile(d, dtype="float64")
    assert not hasattr(tr.kernels, "evaluate")  # the loss serves evaluate: no copy emitted
    batch = {"s": rng.normal(0, 1, (6, T, F)), "y": rng.integers(0, 3, 6)}
    assert tr.evaluate(batch)["loss"] == pytest.approx(tr.loss(**batch), rel=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_predict_and_evaluate_run_the_inference_form(backend, doubling, rng):
    d = _model(f"modes_probe_{backend}", sb.stop_gradient)
    ref = _model(f"modes_ref_{backend}", lambda h: 2.0 * h)  # what inference mode must compute
    plain = _model(f"modes_id_{backend}", lambda h: h)  # what training mode must compute
    trs = [sb.compile(x, backend=backend, dtype="float64", seed=1) for x in (d, ref, plain)]
    batch = {"s": rng.normal(0, 1, (6, T, F)), "y": rng.integers(0, 3, 6)}
    tr, tref, tplain = trs
    assert hasattr(tr.kernels, "evaluate")
    np.testing.assert_allclose(tr.predict(**batch)["logits"], tref.predict(**batch)["logits"], rtol=1e-12)
    np.testing.assert_allclose(tr.evaluate(batch)["loss"], tref.evaluate(batch)["loss"], rtol=1e-12)
    np.testing.assert_allclose(tr.loss(**batch), tplain.loss(**batch), rtol=1e-12)
    assert tr.loss(**batch) != pytest.approx(tr.evaluate(batch)["loss"])


def test_a_recurrence_in_inference_mode_drops_its_dropout_mask():
    """The cell is rewritten (h ⊙ M becomes h) and the mask it no longer reads stops being one
    of the loop's inputs: inference never makes it."""
    m = sb.Model("modes_rnn_mask")
    s = m.input("s", (T, F))
    h = sb.layers.GRU(H, recurrent_dropout=0.5, return_sequences=False, name="gru")(s)
    m.output("h", h)
    m.minimize(sb.sum(h))
    d = sb.derive(m)

    def loop(roots):
        return next(n for n in topo_order(roots) if n.op == "scan")

    before, after = loop([d.outputs["h"]]), loop(inference_form([d.outputs["h"]]))
    assert [i.op for i in before.inputs].count("dropout_mask") == 1
    assert len(after.inputs) == len(before.inputs) - 1
    assert len(after.attrs["cell"].captured) == len(before.attrs["cell"].captured) - 1
    assert not any(n.op == "dropout" for n in topo_order(after.attrs["cell"].forward_roots()))
