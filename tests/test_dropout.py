"""Dropout and its generator (symbp.ops.random): the bits each backend draws against a reference
Philox-4x64-10 checked on Random123's known answers; keep rate and scaling; the numbers of
a step in loss, gradients and step; inference mode; variational masks in recurrences;
gradcheck and checkpoints with dropout on."""

from __future__ import annotations

import numpy as np
import pytest

import symbp as sb
from symbp.ops.random import keep_threshold

BACKENDS = ["numpy", "cython"]
M64 = (1 << 64) - 1


def philox4x64(counter: tuple, key: tuple) -> list[int]:
    """Philox-4x64-10 in plain Python integers, after Salmon et al. (SC'11)."""
    c, (k0, k1) = list(counter), key
    for _ in range(10):
        p0, p1 = 0xD2E7470EE14C6C93 * c[0], 0xCA5A826395121157 * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k0, p1 & M64, (p0 >> 64) ^ c[3] ^ k1, p0 & M64]
        k0, k1 = (k0 + 0x9E3779B97F4A7C15) & M64, (k1 + 0xBB67AE8584CAA73B) & M64
    return c


# Random123's kat_vectors for philox4x64 with 10 rounds: counter (4 words), key (2), result (4).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x16554d9eca36314c, 0xdb20fe9d672d0fdc, 0xd7e772cee186176b, 0x7e68b68aec7ba23b)),
    ((M64,) * 4, (M64,) * 2, (0x87b092c3013fe90b, 0x438c3c67be8d0224, 0x9cc7d7c69cd777b6, 0xa09caebf594f0ba0)),
    ((0x243f6a8885a308d3, 0x13198a2e03707344, 0xa4093822299f31d0, 0x082efa98ec4e6c89),
     (0x452821e638d01377, 0xbe5466cf34e90c6c),
     (0xa528f45403e61d95, 0x38c72dbd566e9788, 0xa5a1610e72fd18b5, 0x57bd43b5e52b7fe6)),
]


@pytest.mark.parametrize("counter,key,want", KAT)
def test_reference_generator_gives_random123_known_answers(counter, key, want):
    assert philox4x64(counter, key) == list(want)


def reference_mask(seed: int, step: int, stream: int, n: int, rate: float) -> np.ndarray:
    """The mask symbp.ops.random specifies, from the reference generator."""
    bits = []
    for block in range((n + 7) // 8):
        for word in philox4x64((1 + block, stream, step, 0), (seed, 0)):
            bits += [word & 0xFFFFFFFF, word >> 32]
    kept = np.array(bits[:n], dtype=np.uint64) >= keep_threshold(rate)
    return np.where(kept, 1.0 / (1.0 - rate), 0.0)


def probe(n: int, rates: tuple, name: str):
    """loss = sum_k (k + 1) * sum(dropout_k(x * W)): with one example of ones, dL/dW is the sum
    of the masks weighted by k + 1, and with one mask it is the mask itself."""
    m = sb.Model(name)
    x = m.input("x", (n,))
    W = m.param("W", (n,), init="ones")
    h = x * W
    loss = None
    for k, rate in enumerate(rates):
        term = (k + 1.0) * sb.sum(sb.dropout(h, rate, label=f"d{k}"))
        loss = term if loss is None else loss + term
    m.output("h", sb.dropout(h, rates[0]))
    m.minimize(loss)
    return sb.derive(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masks_are_the_specified_bits_on_every_backend_and_inference_is_the_identity(backend):
    n = 1001  # past one chunk of C's (512), and a last block of 8 only partly used
    d = probe(n, (0.3, 0.5), f"dropout_bits_{backend}")
    seed = 2**40 + 7
    tr = sb.compile(d, backend=backend, dtype="float64", seed=seed, optimizer=sb.optim.SGD(lr=0.0))
    X = np.ones((1, n))
    for step in (1, 2):  # gradients draw the next step's numbers: step t uses (seed, t)
        want = reference_mask(seed, step, 0, n, 0.3) + 2 * reference_mask(seed, step, 1, n, 0.5)
        np.testing.assert_array_equal(tr.gradients(x=X)["W"], want)
        tr.step(x=X)
    # inference mode (predict, evaluate): the identity
    tr.params["W"] = np.random.default_rng(0).normal(size=n)
    X = np.random.default_rng(1).normal(size=(4, n))
    np.testing.assert_array_equal(tr.predict(x=X)["h"], X * tr.params["W"])
    assert tr.evaluate({"x": X})["loss"] == pytest.approx(3 * float((X * tr.params["W"]).sum()), rel=1e-12)


def test_both_backends_draw_the_same_masks_in_float32():
    d = probe(1000, (0.25,), "dropout_f32")
    X = np.ones((3, 1000))
    grads = [sb.compile(d, backend=b, seed=11).gradients(x=X)["W"] for b in BACKENDS]
    assert grads[0].dtype == np.float32
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_rate_and_scaling(rate):
    n = 40000
    tr = sb.compile(probe(n, (rate,), f"dropout_rate_{int(rate * 10)}"), dtype="float64", seed=3)
    mask = tr.gradients(x=np.ones((1, n)))["W"]
    kept = mask != 0
    assert set(np.unique(mask[kept])) == {1.0 / (1.0 - rate)}
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * sigma  # fails by chance about once in 3 million
    assert abs(mask.mean() - 1.0) < 5 * sigma / (1 - rate)  # inverted: the expectation is kept


def test_loss_gradients_and_step_draw_the_same_numbers():
    tr = sb.compile(probe(64, (0.5,), "dropout_steps"), dtype="float64", seed=5, optimizer=sb.optim.SGD(lr=0.5))
    X = np.ones((1, 64))
    tr.params["W"] = np.linspace(0.5, 1.5, 64)
    g = tr.gradients(x=X)["W"]
    assert tr.loss(x=X) == pytest.approx(float(g @ tr.params["W"]), rel=1e-14)  # the same mask
    np.testing.assert_array_equal(tr.gradients(x=X)["W"], g)  # not advanced
    W = tr.params["W"].copy()
    tr.step(x=X)
    np.testing.assert_allclose((W - tr.params["W"]) / 0.5, g, rtol=1e-12)  # the step used it too
    assert not np.array_equal(tr.gradients(x=X)["W"], g)  # the next step draws new numbers


def test_masks_differ_by_seed():
    d = probe(256, (0.5,), "dropout_seeds")
    X = np.ones((1, 256))
    a, b = (sb.compile(d, seed=s).gradients(x=X)["W"] for s in (0, 1))
    assert not np.array_equal(a, b)


def _rnn_probe(name: str, T: int = 4, H: int = 64):
    """Two linear SimpleRNNs with identity weights: ``a`` with input dropout and no recurrence
    (h_t = x_t ⊙ Mx), ``b`` with recurrent dropout fed once (h_t = M^t). dL/dC_* are the states."""
    m = sb.Model(name)
    xa, xb = m.input("xa", (T, H)), m.input("xb", (T, H))
    ha = sb.layers.SimpleRNN(H, activation=None, dropout=0.5, name="a")(xa)
    hb = sb.layers.SimpleRNN(H, activation=None, recurrent_dropout=0.5, name="b")(xb)
    m.minimize(sb.sum(ha * m.param("Ca", (T, H))) + sb.sum(hb * m.param("Cb", (T, H))))
    eye = np.eye(H)
    params = {"a_Wx": eye, "a_Wh": 0 * eye, "b_Wx": eye, "b_Wh": eye}
    xb_data = np.zeros((1, T, H))
    xb_data[:, 0] = 1.0
    return sb.derive(m), params, {"xa": np.ones((1, T, H)), "xb": xb_data}


def test_recurrent_masks_are_one_per_sequence():
    d, params, batch = _rnn_probe("dropout_rnn")
    grads = [sb.compile(d, backend=b, dtype="float64", params=params, seed=9).gradients(**batch) for b in BACKENDS]
    np.testing.assert_array_equal(grads[0]["Ca"], grads[1]["Ca"])
    np.testing.assert_array_equal(grads[0]["Cb"], grads[1]["Cb"])
    ha, hb = grads[0]["Ca"], grads[0]["Cb"]
    assert set(np.unique(ha)) == {0.0, 2.0} and (ha == ha[0]).all()  # the same input mask at every t
    m1 = hb[1]  # h_1 = M ⊙ h_0 = M
    assert set(np.unique(m1)) == {0.0, 2.0}
    np.testing.assert_array_equal(hb[2], m1 * m1)  # h_2 = M ⊙ M: one mask, not one per step
    np.testing.assert_array_equal(hb[3], m1 * m1 * m1)


def _lstm(name: str, rate: float, rnn=sb.layers.LSTM):
    m = sb.Model(name)
    s = m.input("s", (5, 3))
    y = m.input("y", (), dtype="int64")
    h = rnn(6, dropout=rate, recurrent_dropout=rate, return_sequences=False, name="rnn")(s)
    logits = sb.layers.Dense(4, name="out")(sb.layers.Dropout(rate, name="drop")(h))
    m.output("logits", logits)
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return sb.derive(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_with_dropout_on(backend, rng):
    batch = {"s": rng.normal(size=(3, 5, 3)), "y": rng.integers(0, 4, 3)}
    for rnn in (sb.layers.LSTM, sb.layers.GRU) if backend == "numpy" else (sb.layers.LSTM,):  # CI time
        result = sb.gradcheck(_lstm(f"dropout_gc_{rnn.__name__}_{backend}", 0.4, rnn), batch, backend=backend)
        assert result.ok, str(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recurrent_dropout_in_inference_mode_is_the_model_without_it(backend, rng):
    batch = {"s": rng.normal(size=(3, 5, 3)), "y": rng.integers(0, 4, 3)}
    on, off = (sb.compile(_lstm(f"dropout_lstm_{int(r * 10)}_{backend}", r), backend=backend, dtype="float64", seed=4)
               for r in (0.5, 0.0))
    np.testing.assert_array_equal(on.predict(**batch)["logits"], off.predict(**batch)["logits"])
    assert on.evaluate(batch)["loss"] == off.evaluate(batch)["loss"] == off.loss(**batch)
    assert on.loss(**batch) != off.loss(**batch)


def test_resumed_run_with_dropout_equals_the_uninterrupted_one(tmp_path, rng):
    data = {"s": rng.normal(size=(12, 5, 3)), "y": rng.integers(0, 4, 12)}
    d = _lstm("dropout_resume", 0.3)
    kw = dict(batch_size=4, progress=False, seed=2)
    whole = sb.compile(d, optimizer=sb.optim.Adam(lr=0.01), seed=21)
    whole.fit(data, epochs=2, **kw)
    first = sb.compile(d, optimizer=sb.optim.Adam(lr=0.01), seed=21)
    first.fit(data, epochs=1, checkpoint=tmp_path / "ck.npz", **kw)
    resumed = sb.compile(d, optimizer=sb.optim.Adam(lr=0.01), seed=99)  # the checkpoint's seed wins
    resumed.fit(data, epochs=2, resume=tmp_path / "ck.npz", **kw)
    assert resumed.seed == 21
    for k in whole.params:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k], err_msg=k)


def test_equations_show_the_mask():
    text = str(probe(8, (0.5,), "dropout_eqs").equations())
    assert "M_d0" in text and "⊙M_d0" in text.replace(" ", "")


@pytest.mark.parametrize("make", [
    lambda x: sb.dropout(x, 1.0), lambda x: sb.dropout(x, -0.1), lambda x: sb.dropout(x, "half"),
    lambda x: sb.layers.Dropout(1.5, name="d9")(x),
    lambda x: sb.layers.LSTM(4, recurrent_dropout=2, name="enc")(sb.reshape(x, (2, 2))),
])
def test_bad_rates_are_named(make):
    x = sb.Model("dropout_bad").input("x", (4,))
    with pytest.raises(sb.SymbpError, match=r"rate must be a number in \[0, 1\)"):
        make(x)


def test_dropout_inside_a_step_is_refused():
    m = sb.Model("dropout_step")
    s = m.input("s", (3, 2))
    with pytest.raises(sb.SymbpError, match="inside a scan's step.*recurrent_dropout"):
        sb.scan(lambda h, x_t: (sb.dropout(h + x_t, 0.5), h), s, sb.zeros((2,)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_emission_with_masks_is_deterministic(backend):
    import codegen

    first, second = (codegen.emit(codegen.Spec(_lstm("dropout_det", 0.3), sb.optim.SGD(lr=0.1), "float32"), backend)
                     for _ in range(2))  # the second build's node ids start higher: streams follow creation order
    assert first == second and "dropout_mask(" in first


def test_a_mask_made_inside_a_step_is_refused():
    m = sb.Model("dropout_in_step")
    s = m.input("s", (3, 2))
    ctx = m.param("ctx", (2,))
    _, hs = sb.scan(lambda h, x_t: (h + x_t * sb.dropout(ctx, 0.5), h), s, sb.zeros((2,)), label="loop")
    m.minimize(sb.sum(hs))
    with pytest.raises(sb.SymbpError, match="scan 'loop': a dropout mask is made inside the step"):
        sb.compile(sb.derive(m))
