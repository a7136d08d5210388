"""sb.layers.Attention (issue 11): Luong dot/general and Bahdanau additive, with a padding mask.

Each kind against a NumPy reference on concrete arrays, the weights a distribution that is 0 at
padded positions, gradients against finite differences and Cython against NumPy (float64), the
one-step query of a decoder, shared weights, and the errors for inputs that do not fit.
"""

from __future__ import annotations

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.trainer import DataError

B, TQ, S, DQ, DK, DV = 3, 2, 5, 4, 3, 2
KINDS = ["dot", "general", "additive"]
BACKENDS = ["numpy", pytest.param("cython", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("Cython"), reason="needs Cython"))]
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 1, 0]])


def reference(kind, params, q, k, v, mask):
    """The attention of ``kind`` in plain NumPy: (context, weights)."""
    if kind == "dot":
        scores = np.einsum("btd,bsd->bts", q, k)
    elif kind == "general":
        scores = np.einsum("btd,bsd->bts", q @ params["att_W"], k)
    else:
        hidden = np.tanh((q @ params["att_Wq"])[:, :, None, :] + (k @ params["att_Wk"])[:, None, :, :])
        scores = hidden @ params["att_v"]
    scores = np.where(mask[:, None, :] > 0, scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    w = e / e.sum(-1, keepdims=True)
    return w @ v, w


def model(kind, mask_dtype="float", one_step=False, tq=TQ):
    """Attention of a query over keys and values, each an input scaled by a parameter (so the
    gradient check reaches them); the outputs named, a loss weighting both by random inputs."""
    m = sb.Model(f"att_{kind}")
    dk = DQ if kind == "dot" else DK
    q = m.input("q", (DQ,) if one_step else (tq, DQ)) * m.param("pq", (DQ,), init="ones")
    k = m.input("k", (S, dk)) * m.param("pk", (dk,), init="ones")
    v = m.input("v", (S, DV)) * m.param("pv", (DV,), init="ones")
    mk = m.input("mask", (S,), dtype=mask_dtype)
    context, weights = sb.layers.Attention(kind, name="att")(q, k, v, mask=mk)
    m.output("context", context)
    m.output("weights", weights)
    m.minimize(sb.sum(context * m.input("cc", context.shape[1:])) + sb.sum(weights * m.input("cw", weights.shape[1:])))
    return m


def batch(kind, rng, one_step=False, mask=MASK):
    dk = DQ if kind == "dot" else DK
    out = {"q": rng.normal(size=(B, DQ) if one_step else (B, TQ, DQ)), "k": rng.normal(size=(B, S, dk)),
           "v": rng.normal(size=(B, S, DV)), "mask": mask.astype(float),
           "cc": rng.normal(size=(B, DV) if one_step else (B, TQ, DV)),
           "cw": rng.normal(size=(B, S) if one_step else (B, TQ, S))}
    return out


@pytest.mark.parametrize("mask_dtype", ["float", "int64"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_equals_numpy_and_its_weights_are_0_where_masked(kind, mask_dtype, rng):
    tr = sb.compile(sb.derive(model(kind, mask_dtype)), dtype="float64", seed=1)
    data = batch(kind, rng)
    if mask_dtype == "int64":
        data["mask"] = MASK
    params = {k: rng.normal(size=p.shape) for k, p in tr.params.items()}
    for name, value in params.items():
        tr.params[name] = value
    out = tr.predict(**data)
    c, w = reference(kind, params, data["q"] * params["pq"], data["k"] * params["pk"], data["v"] * params["pv"],
                     MASK)
    np.testing.assert_allclose(out["weights"], w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["context"], c, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["weights"].sum(-1), 1.0, rtol=1e-14)
    assert np.all(out["weights"][np.broadcast_to(MASK[:, None, :] == 0, out["weights"].shape)] == 0.0)
    assert np.all(out["weights"][np.broadcast_to(MASK[:, None, :] == 1, out["weights"].shape)] > 0.0)


def test_an_int_mask_other_than_0_1_is_an_error_naming_the_input(rng):
    tr = sb.compile(sb.derive(model("dot", "int64")), dtype="float64")
    data = batch("dot", rng, mask=MASK * 2)
    with pytest.raises(DataError, match="'mask'"):
        tr.predict(**data)


@pytest.mark.parametrize("kind", KINDS)
def test_a_one_step_query_is_the_one_row_of_a_sequence_query(kind, rng):
    step = sb.compile(sb.derive(model(kind, one_step=True)), dtype="float64", seed=2)
    seq = sb.compile(sb.derive(model(kind, tq=1)), dtype="float64", params=dict(step.params))
    data = batch(kind, rng, one_step=True)
    whole = dict(data, q=data["q"][:, None, :], cc=data["cc"][:, None, :], cw=data["cw"][:, None, :])
    a, b = step.predict(**data), seq.predict(**whole)
    assert a["context"].shape == (B, DV) and a["weights"].shape == (B, S)
    np.testing.assert_allclose(a["context"], b["context"][:, 0], rtol=1e-13)
    np.testing.assert_allclose(a["weights"], b["weights"][:, 0], rtol=1e-13)
    np.testing.assert_allclose(step.loss(**data), seq.loss(**whole), rtol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_finite_differences_and_cython_equals_numpy(kind, backend, rng):
    m, data = model(kind), batch(kind, rng)
    result = sb.gradcheck(m, data, backend=backend, tolerance=1e-6)
    assert result.ok, str(result)
    assert set(result.errors) >= {"pq", "pk", "pv"}
    if backend == "cython":
        d = sb.derive(m)
        ref = sb.compile(d, backend="numpy", dtype="float64", seed=4)
        cy = sb.compile(d, backend="cython", dtype="float64", params=dict(ref.params))
        np.testing.assert_allclose(cy.loss(**data), ref.loss(**data), rtol=1e-12)
        g_ref, g_cy = ref.gradients(**data), cy.gradients(**data)
        for name in g_ref:
            np.testing.assert_allclose(g_cy[name], g_ref[name], rtol=1e-10, atol=1e-13, err_msg=name)
        p_ref, p_cy = ref.predict(**data), cy.predict(**data)
        for name in p_ref:
            np.testing.assert_allclose(p_cy[name], p_ref[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_calling_the_layer_again_shares_its_weights():
    m = sb.Model("dec")
    enc = m.input("enc", (S, DK))
    att = sb.layers.Attention("additive", units=6, name="att")
    att(m.input("h1", (DQ,)), enc)
    att(m.input("h2", (DQ,)), enc)
    assert sorted(m.params) == ["att_Wk", "att_Wq", "att_v"]
    assert m.params["att_Wq"].shape == (DQ, 6)
    with pytest.raises(sb.SymbpError, match="layer 'att'.*Wq"):
        att(m.input("h3", (DQ + 1,)), enc)


def bad(case):
    m = sb.Model("bad")
    q, k = m.input("q", (TQ, DQ)), m.input("k", (S, DQ))
    att = sb.layers.Attention("general" if case == "general_w" else "dot", name="att")
    if case == "widths":
        att(q, m.input("k3", (S, DQ + 1)))
    elif case == "keys_rank":
        att(q, m.input("k2", (DQ,)))
    elif case == "query_rank":
        att(m.input("q4", (2, TQ, DQ)), k)
    elif case == "values_positions":
        att(q, k, m.input("v", (S + 1, DV)))
    elif case == "mask_shape":
        att(q, k, mask=m.input("mk", (S + 1,)))
    elif case == "mask_not_tensor":
        att(q, k, mask=np.ones((B, S)))
    elif case == "int_query":
        att(m.input("ids", (TQ, DQ), dtype="int64"), k)
    elif case == "not_a_tensor":
        att(q, np.zeros((B, S, DQ)))
    elif case == "general_w":
        att(q, k)
        att(m.input("q2", (TQ, DQ + 2)), k)


@pytest.mark.parametrize("case, says", [
    ("widths", "same width|one width"), ("keys_rank", "keys must be"), ("query_rank", "query must be"),
    ("values_positions", "source positions"), ("mask_shape", "mask must have shape"),
    ("mask_not_tensor", "mask must have shape"), ("int_query", "query must be a float"),
    ("not_a_tensor", "keys must be a symbolic"), ("general_w", "W was made for"),
])
def test_inputs_that_do_not_fit_are_errors_naming_the_layer(case, says):
    with pytest.raises(sb.SymbpError, match=f"layer 'att'.*({says})"):
        bad(case)


@pytest.mark.parametrize("kwargs, says", [
    ({"kind": "luong"}, "unknown attention kind 'luong'"), ({"kind": "additive", "units": 0}, "units"),
    ({"kind": "dot", "units": 4}, "units"),
])
def test_bad_settings_are_errors_naming_the_layer(kwargs, says):
    with pytest.raises(sb.SymbpError, match=f"layer 'att'.*{says}"):
        sb.layers.Attention(name="att", **kwargs)


def decoder(kind):
    """A decoder whose scan step attends (one-step query) over encoder outputs from outside the loop."""
    m = sb.Model(f"dec_{kind}")
    enc = m.input("enc", (S, DQ)) * m.param("pe", (DQ,), init="ones")
    mk, ys = m.input("mask", (S,)), m.input("ys", (TQ + 1, DV))
    att, W = sb.layers.Attention(kind, name="att"), m.param("W", (DQ + DV, DQ))

    def step(h, y_t):
        context, _ = att(h, enc, mask=mk)          # the model found from the graph, inside the loop
        h = sb.tanh(sb.concat([context, y_t], axis=-1) @ W)
        return h, h

    _, hs = sb.scan(step, ys, sb.zeros((DQ,)))
    m.minimize(sb.sum(hs * m.input("c", (TQ + 1, DQ))))
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["dot", "additive"])
def test_attention_inside_a_decoder_loop_ignores_padding_and_its_gradients_are_right(kind, backend, rng):
    m = decoder(kind)
    data = {"enc": rng.normal(size=(B, S, DQ)), "mask": MASK.astype(float), "ys": rng.normal(size=(B, TQ + 1, DV)),
            "c": rng.normal(size=(B, TQ + 1, DQ))}
    result = sb.gradcheck(m, data, backend=backend, tolerance=1e-6)
    assert result.ok and set(result.errors) >= {"pe", "W"}, str(result)
    tr = sb.compile(sb.derive(m), backend=backend, dtype="float64", seed=5)
    changed = dict(data, enc=np.where(MASK[:, :, None] == 0, 1e3, data["enc"]))  # only padded positions
    assert tr.loss(**changed) == pytest.approx(tr.loss(**data), rel=1e-13)
    assert tr.loss(**dict(data, mask=np.ones((B, S)))) != pytest.approx(tr.loss(**data), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_masked_weights_are_exactly_0_and_a_fully_masked_row_is_uniform(backend, rng):
    mask = MASK.copy()
    mask[0] = 0  # nothing to attend to: uniform weights, finite values, not NaN
    tr = sb.compile(sb.derive(model("additive")), backend=backend, dtype="float32", seed=6)
    data = batch("additive", rng, mask=mask)
    out = tr.predict(**data)
    w = out["weights"]
    assert w.dtype == np.float32 and np.isfinite(out["context"]).all()
    np.testing.assert_allclose(w[0], 1.0 / S, rtol=1e-6)
    assert np.all(w[1:][np.broadcast_to(mask[1:, None, :] == 0, w[1:].shape)] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert all(np.isfinite(g).all() for g in tr.gradients(**data).values())


def test_cython_at_the_default_flags_equals_numpy(monkeypatch, rng):
    """What users run: -O3 -march=native (the suite's conftest builds at -O1), every kind in one model."""
    monkeypatch.delenv("SYMBP_CFLAGS", raising=False)
    m = sb.Model("att_all")
    q = m.input("q", (TQ, DQ)) * m.param("pq", (DQ,), init="ones")
    k = m.input("k", (S, DQ)) * m.param("pk", (DQ,), init="ones")
    mk = m.input("mask", (S,))
    loss = None
    for kind in KINDS:
        context, weights = sb.layers.Attention(kind, name=f"att_{kind}")(q, k, mask=mk)
        term = sb.sum(context * m.input(f"c_{kind}", (TQ, DQ))) + sb.sum(weights * m.input(f"w_{kind}", (TQ, S)))
        m.output(f"weights_{kind}", weights)
        loss = term if loss is None else loss + term
    m.minimize(loss)
    data = {"q": rng.normal(size=(B, TQ, DQ)), "k": rng.normal(size=(B, S, DQ)), "mask": MASK.astype(float),
            **{f"c_{kind}": rng.normal(size=(B, TQ, DQ)) for kind in KINDS},
            **{f"w_{kind}": rng.normal(size=(B, TQ, S)) for kind in KINDS}}
    d = sb.derive(m)
    ref = sb.compile(d, backend="numpy", dtype="float64", seed=7)
    cy = sb.compile(d, backend="cython", dtype="float64", params=dict(ref.params))
    np.testing.assert_allclose(cy.loss(**data), ref.loss(**data), rtol=1e-12)
    g_ref, g_cy = ref.gradients(**data), cy.gradients(**data)
    for name in g_ref:
        np.testing.assert_allclose(g_cy[name], g_ref[name], rtol=1e-10, atol=1e-13, err_msg=name)
    p_ref, p_cy = ref.predict(**data), cy.predict(**data)
    for name in p_ref:
        np.testing.assert_array_equal(p_cy[name] == 0, p_ref[name] == 0, err_msg=name)
        np.testing.assert_allclose(p_cy[name], p_ref[name], rtol=1e-12, atol=1e-15, err_msg=name)
