"""Recurrences: rolled loops against the unrolled oracle, finite differences, long sequences,
truncation and state carried across batches, diagnostics, and clear errors."""

import numpy as np
import pytest

import symbp as sb
from symbp.autodiff.bptt import unroll

LAYERS = {"rnn": sb.layers.SimpleRNN, "lstm": sb.layers.LSTM, "gru": sb.layers.GRU}
F, H, V, B = 3, 4, 5, 3


def seq_model(kind: str, T: int, truncate=None, seq: bool = True, mask: bool = False, name: str = "m"):
    """A recurrent layer, then a Dense readout with cross-entropy on every step or the last."""
    m = sb.Model(name)
    s = m.input("s", (T, F))
    layer = LAYERS[kind](H, name=kind, truncate=truncate, return_sequences=seq)
    h = layer(m, s, mask=m.input("mk", (T,)) if mask else None)
    y = m.input("y", (T,) if seq else (), dtype="int64")
    m.minimize(sb.softmax_cross_entropy(sb.layers.Dense(V, name="out")(m, h), y))
    return m


def seq_batch(rng, T: int, seq: bool = True, mask: bool = False) -> dict:
    batch = {"s": rng.normal(size=(B, T, F)), "y": rng.integers(0, V, (B, T) if seq else (B,))}
    if mask:
        lengths = rng.integers(1, T + 1, B)
        batch["mk"] = (np.arange(T)[None, :] < lengths[:, None]).astype(float)
    return batch


CASES = [(T, None, True) for T in (1, 2, 7)] + [(2, None, False), (7, None, False)] + \
        [(7, (2, 3), True), (7, (3, 2), True), (7, (3, 3), False), (7, (1, 1), True)]


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("T,truncate,seq", CASES)
def test_rolled_equals_unrolled(kind, T, truncate, seq, rng):
    m = seq_model(kind, T, truncate, seq)
    batch = seq_batch(rng, T, seq)
    rolled = sb.compile(sb.derive(m), dtype="float64", seed=1)
    unrolled = sb.compile(sb.derive(unroll(m)), dtype="float64", seed=1)
    assert "_scan" in rolled.source and "_scan" not in unrolled.source
    assert abs(rolled.loss(**batch) - unrolled.loss(**batch)) < 1e-12
    g1, g2 = rolled.gradients(**batch), unrolled.gradients(**batch)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=0, atol=1e-10, err_msg=f"{kind} T={T} {truncate} {k}")


def test_truncation_changes_the_gradient(rng):
    batch = seq_batch(rng, 7)
    full = sb.compile(sb.derive(seq_model("lstm", 7)), dtype="float64", seed=1).gradients(**batch)
    cut = sb.compile(sb.derive(seq_model("lstm", 7, (2, 2))), dtype="float64", seed=1).gradients(**batch)
    assert np.abs(full["lstm_Wh"] - cut["lstm_Wh"]).max() > 1e-4
    np.testing.assert_allclose(full["out_W"], cut["out_W"], atol=1e-12)  # the readout is not recurrent


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_cells_match_finite_differences(kind, rng):
    m = seq_model(kind, 4, mask=True)
    result = sb.gradcheck(m, seq_batch(rng, 4, mask=True), tolerance=1e-6)
    assert result.ok, str(result)


def test_scan_tuple_carry_and_captured_batch_tensor(rng):
    """A hand-written step: tuple carry, two sequences, a batch-wide context read every step."""
    m = sb.Model("ctx")
    s, u, c = m.input("s", (5, F)), m.input("u", (5, 1)), m.input("c", (H,))
    W, U = m.param("W", (F, H)), m.param("U", (H, H))
    ctx = sb.tanh(c @ m.param("C", (H, H)))

    def step(carry, xs):
        h, acc = carry
        x_t, u_t = xs
        h = sb.tanh(x_t @ W + h @ U + ctx) * u_t
        return (h, acc + h), (h, h * h)

    (hT, acc), (hs, sq) = sb.scan(step, (s, u), (sb.zeros((H,)), sb.zeros((H,))))
    m.minimize(sb.mean(hs) + sb.mean(sq) + sb.mean(acc * hT))
    batch = {"s": rng.normal(size=(B, 5, F)), "u": rng.uniform(0.5, 1.5, (B, 5, 1)), "c": rng.normal(size=(B, H))}
    assert sb.gradcheck(m, batch, tolerance=1e-6).ok
    rolled = sb.compile(sb.derive(m), dtype="float64").gradients(**batch)
    unrolled = sb.compile(sb.derive(unroll(m)), dtype="float64").gradients(**batch)
    for k in rolled:
        np.testing.assert_allclose(rolled[k], unrolled[k], atol=1e-10)


def test_parameters_declared_inside_the_step(rng):
    m = sb.Model("inside")
    s = m.input("s", (4, F))
    _, hs = sb.scan(lambda h, x: (sb.tanh(x @ m.param("W", (F, H)) + h), h), s, sb.zeros((H,)))
    m.minimize(sb.mean(hs * hs))
    assert list(m.params) == ["W"]
    assert sb.gradcheck(m, {"s": rng.normal(size=(B, 4, F))}, tolerance=1e-6).ok


def _size(T):
    m = seq_model("lstm", T, name="long")
    return sb.compile(sb.derive(m), optimizer=sb.optim.SGD(lr=0.1, clip_norm=1.0)), m


def test_long_sequence_compiles_to_the_same_program(rng):
    short, _ = _size(8)
    tr, _ = _size(4096)
    assert short.source.count("\n") == tr.source.count("\n")
    assert len(tr.source) - len(short.source) < 400  # only the literal T (digits) differs
    loss = tr.step(**seq_batch(rng, 4096))
    assert np.isfinite(loss)


def linear_model(truncate=None, stateful=False):
    """h_t = x_t + w h_{t-1}, loss = sum_t h_t (batch of one): every number by hand."""
    m = sb.Model("lin")
    s = m.input("s", (4, 1))
    w = m.param("w", (1, 1), init=0.5)

    def step(h, x):
        h = x + h @ w
        return h, h

    _, hs = sb.scan(step, s, sb.zeros((1,)), truncate=truncate, stateful=stateful, label="lin")
    m.minimize(sb.sum(hs))
    return sb.compile(sb.derive(m), dtype="float64", optimizer=sb.optim.SGD(lr=0.0))


@pytest.mark.parametrize("truncate,expected", [((1, 1), 4.25), ((2, 2), 5.0), ((4, 4), 5.75), ((2, 1), 2.75),
                                               ((1, 2), 5.5)])
def test_truncation_by_hand(truncate, expected):
    # h = 1, 1.5, 1.75, 1.875. Full BPTT: dh_t/dw = h_{t-1} + w dh_{t-1}/dw = 0, 1, 2, 2.75 (sum 5.75).
    # (1, 1): each h_t sees one step: 0 + 1 + 1.5 + 1.75. (2, 2): chunks {0,1} {2,3}: 0 + 1 + 1.5 + 2.5.
    # (2, 1): only each chunk's last step, one step back: h_0 + h_2 = 1 + 1.75.
    # (1, 2): every step, back two: 0 + 1 + (1.5 + .5) + (1.75 + .75) = 5.5.
    tr = linear_model(truncate)
    x = np.ones((1, 4, 1))
    assert tr.loss(s=x) == pytest.approx(6.125)
    assert tr.gradients(s=x)["w"][0, 0] == pytest.approx(expected, abs=1e-12)


def test_state_carries_across_batches():
    tr = linear_model(stateful=True)  # lr = 0: steps advance the state, not the weight
    x = np.ones((1, 4, 1))
    assert tr.step(s=x) == pytest.approx(6.125)         # from h = 0; ends at h = 1.875
    assert tr.loss(s=x) == pytest.approx(7.8828125)     # 1.9375 + 1.96875 + 1.984375 + 1.9921875
    assert tr.loss(s=x) == pytest.approx(7.8828125)     # loss (like predict, gradients) reads, never advances
    assert tr.step(s=x) == pytest.approx(7.8828125)
    tr.reset_state()
    assert tr.loss(s=x) == pytest.approx(6.125)
    assert tr.gradients(s=x)["w"][0, 0] == pytest.approx(5.75)
    assert tr.gradients(s=x)["w"][0, 0] == pytest.approx(5.75)
    tr.step(s=x)
    # From h = 1.875, taken as a constant: dh_t/dw = 1.875, 2.875, 3.40625, 3.6875.
    assert tr.gradients(s=x)["w"][0, 0] == pytest.approx(11.84375)


def test_gradient_norms_and_clipping(rng, tmp_path):
    T = 12
    m = seq_model("rnn", T)
    tr = sb.compile(sb.derive(m), dtype="float64", optimizer=sb.optim.SGD(lr=1.0, clip_norm=1e-3))
    batch = seq_batch(rng, T)
    norms = tr.gradient_norms_through_time(**batch)["rnn"]
    assert norms.shape == (T,) and np.all(norms > 0)
    before = {k: v.copy() for k, v in tr.params.items()}
    tr.step(**batch)
    moved = np.sqrt(sum(np.sum((tr.params[k] - before[k]) ** 2) for k in before))
    assert moved == pytest.approx(1e-3, rel=1e-3)
    pytest.importorskip("matplotlib")
    from symbp.show.plots import plot_gradient_norms

    path = plot_gradient_norms({"rnn": norms}, str(tmp_path / "g.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_padding_mask_holds_the_last_real_state(rng):
    def last(T, mask):
        m = sb.Model("mask")
        s = m.input("s", (T, F))
        h = sb.layers.GRU(H, name="gru", return_sequences=False)(m, s, mask=m.input("mk", (T,)) if mask else None)
        m.output("h", h)
        m.minimize(sb.mean(h))
        return sb.compile(sb.derive(m), dtype="float64", seed=3)

    x = rng.normal(size=(2, 5, F))
    padded = last(5, True).predict(s=x, mk=np.array([[1, 1, 1, 0, 0]] * 2, float))["h"]
    short = last(3, False).predict(s=x[:, :3])["h"]
    np.testing.assert_allclose(padded, short, atol=1e-12)


def test_bad_input_is_explained():
    m = sb.Model("bad")
    s = m.input("s", (4, F))
    W = m.param("W", (F, H))
    with pytest.raises(sb.SymbpError, match=r"carry 0 starts with shape \(batch, 3\).*\(batch, 4\)"):
        sb.scan(lambda h, x: (sb.tanh(x @ W), x), s, sb.zeros((3,)))
    with pytest.raises(sb.SymbpError, match="must return a pair"):
        sb.scan(lambda h, x: sb.tanh(x @ W), s, sb.zeros((H,)))
    with pytest.raises(sb.SymbpError, match="same structure"):
        sb.scan(lambda h, x: (sb.tanh(x @ W), x), s, (sb.zeros((H,)), sb.zeros((H,))))
    with pytest.raises(sb.SymbpError, match="empty"):
        sb.scan(lambda h, x: (h, x), s[:, 0:0], sb.zeros((H,)))
    with pytest.raises(sb.SymbpError, match="shorter than the truncation window"):
        sb.scan(lambda h, x: (h + x, x), s, sb.zeros((F,)), truncate=(2, 5))
    with pytest.raises(sb.SymbpError, match="a loop inside a loop.s step is not supported"):
        sb.scan(lambda h, x: (sb.scan(lambda g, z: (g, z), s, sb.zeros((F,)))[0], x), s, sb.zeros((F,)))
    with pytest.raises(sb.SymbpError, match="batch, T"):
        sb.scan(lambda h, x: (h, x), W, sb.zeros((H,)))


def test_clip_by_value_in_a_recurrent_step(rng):
    m = seq_model("gru", 6)
    tr = sb.compile(sb.derive(m), dtype="float64", optimizer=sb.optim.SGD(lr=1.0, clip_value=1e-4))
    before = {k: v.copy() for k, v in tr.params.items()}
    tr.step(**seq_batch(rng, 6))
    moved = max(np.abs(tr.params[k] - before[k]).max() for k in before)
    assert moved == pytest.approx(1e-4, rel=1e-9)


def test_generated_code_is_deterministic():
    sources = {sb.compile(sb.derive(seq_model("lstm", 5, (2, 3)))).source for _ in range(2)}
    assert len(sources) == 1


@pytest.mark.parametrize("truncate", [None, (2, 3)])
def test_stacked_layers_with_mask_match_unrolled(truncate, rng):
    """GRU over an LSTM's outputs (gradients flow between loops), padding mask, a context input."""
    T = 5
    m = sb.Model("stack")
    s, mk = m.input("s", (T, F)), m.input("mk", (T,))
    h1 = sb.layers.LSTM(H, name="l1", truncate=truncate)(m, s, mask=mk)
    h2 = sb.layers.GRU(H, name="l2", return_sequences=False)(m, sb.tanh(h1), mask=mk)
    m.minimize(sb.mse(sb.layers.Dense(1, name="out")(m, h2), m.input("y", (1,))))
    batch = seq_batch(rng, T, mask=True)
    batch["y"] = rng.normal(size=(B, 1))
    rolled = sb.compile(sb.derive(m), dtype="float64").gradients(**batch)
    unrolled = sb.compile(sb.derive(unroll(m)), dtype="float64").gradients(**batch)
    for k in rolled:
        np.testing.assert_allclose(rolled[k], unrolled[k], atol=1e-10, err_msg=k)
    if truncate is None:  # the truncated gradient is not the derivative of the loss
        result = sb.gradcheck(m, batch)
        assert result.ok, str(result)


def test_masked_cross_entropy_averages_real_steps_only(rng):
    T = 4
    m = sb.Model("mce")
    s, mk, y = m.input("s", (T, F)), m.input("mk", (T,)), m.input("y", (T,), dtype="int64")
    logits = sb.layers.Dense(V, name="out")(m, sb.layers.SimpleRNN(H, name="rnn")(m, s, mask=mk))
    m.output("logits", logits)
    m.minimize(sb.layers.masked_softmax_cross_entropy(logits, y, mk))
    tr = sb.compile(sb.derive(m), dtype="float64")
    batch = seq_batch(rng, T, mask=True)
    z = tr.predict(**batch)["logits"]
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, batch["y"][..., None], -1)[..., 0]
    assert tr.loss(**batch) == pytest.approx((ce * batch["mk"]).sum() / batch["mk"].sum(), rel=1e-12)
    assert sb.gradcheck(m, batch, tolerance=1e-6).ok
