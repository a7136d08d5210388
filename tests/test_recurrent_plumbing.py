"""Recurrent plumbing on both backends: initial_state, return_state, go_backwards, Bidirectional,
stacking, and sb.scan with no input sequence; each against finite differences, a reference
written another way, and the NumPy backend."""

import numpy as np
import pytest

import symbp as sb
from symbp.autodiff.bptt import unroll

L = sb.layers
T, F, H, B = 5, 3, 4, 3
KINDS = {"rnn": L.SimpleRNN, "lstm": L.LSTM, "gru": L.GRU}


def _batch(rng, **shapes):
    return {k: rng.normal(size=(B, *s)) for k, s in shapes.items()}


def _mask(rng):
    lengths = np.array([T, 2, 4])
    return (np.arange(T)[None, :] < lengths[:, None]).astype(float)


def state_model():
    """Each kind with an initial state computed from an input by a Dense layer (so its gradient
    must reach the Dense weights), masked, returning its state; every state is an output."""
    m = sb.Model("states")
    x, z, mk = m.input("x", (T, F)), m.input("z", (F,)), m.input("mk", (T,))
    loss = None
    for kind, layer in KINDS.items():
        h0 = L.Dense(H, activation="tanh", name=f"{kind}_h0")(z)
        init = (h0, L.Dense(H, name=f"{kind}_c0")(z)) if kind == "lstm" else h0
        hs, state = layer(H, return_state=True, name=kind)(x, mask=mk, initial_state=init)
        last, st = layer(H, return_state=True, return_sequences=False, name=f"{kind}_last")(x, initial_state=init)
        m.output(f"{kind}_hs", hs)
        m.output(f"{kind}_last", last)
        for k, s in enumerate(state if kind == "lstm" else (state,)):
            m.output(f"{kind}_state{k}", s)
        for k, s in enumerate(st if kind == "lstm" else (st,)):
            m.output(f"{kind}_last_state{k}", s)
        parts = [sb.mean(hs * hs), *(sb.mean(sb.tanh(s)) for s in (state if kind == "lstm" else (state,))),
                 sb.mean(last * st[0] if kind == "lstm" else last * st)]
        for p in parts:
            loss = p if loss is None else loss + p
    m.minimize(loss)
    return m


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def reference(kind, p, x, h, c, mask):
    """The layer's recurrence in NumPy (symbp.layers.recurrent's formulas), from state (h, c)."""
    W, U, b = p[f"{kind}_Wx"], p[f"{kind}_Wh"], p[f"{kind}_b"]
    hs = []
    for t in range(x.shape[1]):
        a, u = x[:, t] @ W + b, h @ U
        if kind == "rnn":
            nh, nc = np.tanh(a + u), c
        elif kind == "lstm":
            i, f, g, o = np.split(a + u, 4, axis=1)
            nc = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(g)
            nh = _sigmoid(o) * np.tanh(nc)
        else:
            zg, r = _sigmoid(a[:, :H] + u[:, :H]), _sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
            n = np.tanh(a[:, 2 * H:] + r * u[:, 2 * H:])
            nh, nc = (1 - zg) * n + zg * h, c
        keep = mask[:, t:t + 1]
        h, c = keep * nh + (1 - keep) * h, keep * nc + (1 - keep) * c
        hs.append(h)
    return np.stack(hs, axis=1), h, c


@pytest.fixture(scope="module")
def states():
    rng = np.random.default_rng(5)
    batch = _batch(rng, x=(T, F), z=(F,))
    batch["mk"] = _mask(rng)
    return state_model(), batch


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_initial_and_returned_state(backend, states):
    m, batch = states
    tr = sb.compile(sb.derive(m), backend=backend, dtype="float64", seed=2)
    out, p = tr.predict(**batch), tr.params
    for kind in KINDS:
        h0 = np.tanh(batch["z"] @ p[f"{kind}_h0_W"] + p[f"{kind}_h0_b"])
        c0 = batch["z"] @ p[f"{kind}_c0_W"] + p[f"{kind}_c0_b"] if kind == "lstm" else np.zeros_like(h0)
        hs, hT, cT = reference(kind, p, batch["x"], h0, c0, batch["mk"])
        np.testing.assert_allclose(out[f"{kind}_hs"], hs, atol=1e-12, err_msg=kind)
        np.testing.assert_allclose(out[f"{kind}_state0"], hT, atol=1e-12, err_msg=kind)  # last real step
        ones = np.ones((B, T))
        _, hT, cT = reference(kind, {k.replace("_last", ""): v for k, v in p.items() if "_last_" in k},
                              batch["x"], h0, c0, ones)
        np.testing.assert_allclose(out[f"{kind}_last"], hT, atol=1e-12, err_msg=kind)
        np.testing.assert_allclose(out[f"{kind}_last_state0"], hT, atol=1e-12, err_msg=kind)
        if kind == "lstm":
            np.testing.assert_allclose(out[f"{kind}_last_state1"], cT, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_initial_state_gradients_reach_its_producer(backend, states):
    m, batch = states
    result = sb.gradcheck(m, batch, backend=backend, tolerance=1e-6)
    assert result.ok, str(result)
    g = sb.compile(sb.derive(m), backend=backend, dtype="float64", seed=0).gradients(**batch)
    for kind in KINDS:
        assert np.abs(g[f"{kind}_h0_W"]).max() > 1e-3
    assert np.abs(g["lstm_c0_W"]).max() > 1e-3


def direction_models(kind, seq: bool):
    """go_backwards against the layer on x[:, ::-1], and Bidirectional against the two
    directions by hand, in models whose parameters have the same names."""
    wrapped, by_hand = sb.Model("wrapped"), sb.Model("by_hand")
    for m in (wrapped, by_hand):
        x, mk = m.input("x", (T, F)), m.input("mk", (T,))
        hand = m is by_hand
        back = KINDS[kind](H, name="bk", go_backwards=not hand, return_sequences=seq)(x[:, ::-1] if hand else x)
        if hand:
            f = KINDS[kind](H, name="bi", return_sequences=seq)(x, mask=mk)
            b = KINDS[kind](H, name="bi_backward", return_sequences=seq)(x[:, ::-1], mask=mk[:, ::-1])
            both = sb.concat([f, b[:, ::-1] if seq else b], axis=-1)
        else:
            both = L.Bidirectional(KINDS[kind](H, name="bi", return_sequences=seq))(x, mask=mk)
        m.output("back", back)
        m.output("both", both)
        m.minimize(sb.mean(sb.tanh(back) ** 2) + sb.mean(sb.sigmoid(both) * both))
    return wrapped, by_hand


@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("kind,seq", [("lstm", True), ("gru", False), ("rnn", True)])
def test_go_backwards_and_bidirectional_match_by_hand(kind, seq, backend, rng):
    wrapped, by_hand = direction_models(kind, seq)
    batch = _batch(rng, x=(T, F))
    batch["mk"] = _mask(rng)
    a = sb.compile(sb.derive(wrapped), backend=backend, dtype="float64", seed=3)
    b = sb.compile(sb.derive(by_hand), backend="numpy", dtype="float64", seed=3)
    assert sorted(a.params) == sorted(b.params)
    for k in a.params:
        b.params[k] = a.params[k]
    pa, pb = a.predict(**batch), b.predict(**batch)
    assert pa["both"].shape == ((B, T, 2 * H) if seq else (B, 2 * H))
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], atol=1e-12, err_msg=k)
    ga, gb = a.gradients(**batch), b.gradients(**batch)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], atol=1e-12, err_msg=k)
    if backend == "numpy":
        result = sb.gradcheck(wrapped, batch, tolerance=1e-6)
        assert result.ok, str(result)


def test_bidirectional_returns_both_states(rng):
    m = sb.Model("bistate")
    x = m.input("x", (T, F))
    h0 = [m.input(f"{v}{d}", (H,)) for d in "fb" for v in "hc"]
    out, fs, bs = L.Bidirectional(L.LSTM(H, name="enc", return_state=True))(
        x, initial_state=((h0[0], h0[1]), (h0[2], h0[3])))
    assert out.shape == (None, T, 2 * H) and len(fs) == 2 and len(bs) == 2
    m.output("out", out)
    m.output("back_h", bs[0])
    m.minimize(sb.mean(out * out) + sb.mean(fs[1]))
    batch = _batch(rng, x=(T, F), hf=(H,), cf=(H,), hb=(H,), cb=(H,))
    assert sb.gradcheck(m, batch, tolerance=1e-6).ok
    got = sb.compile(sb.derive(m), dtype="float64").predict(**batch)
    np.testing.assert_allclose(got["out"][:, 0, H:], got["back_h"], atol=1e-12)  # the backward pass ends at t = 0


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_stacked_layers(backend, rng):
    """A list of recurrent layers in a Sequential: each layer's sequence feeds the next."""
    m = sb.Model("stack")
    x, y = m.input("x", (T, F)), m.input("y", (), dtype="int64")
    h = L.Sequential([L.LSTM(H, name="s1"), L.Bidirectional(L.GRU(H, name="s2")),
                      L.SimpleRNN(H, return_sequences=False, name="s3")])(x)
    assert h.shape == (None, H)
    m.minimize(sb.softmax_cross_entropy(L.Dense(3, name="out")(h), y))
    batch = {**_batch(rng, x=(T, F)), "y": rng.integers(0, 3, B)}
    assert sb.gradcheck(m, batch, backend=backend, tolerance=1e-6).ok


def generator_model():
    """A loop with no input sequence: h_{t+1} = tanh(h_t W + b), from a state made from z."""
    m = sb.Model("gen")
    z = m.input("z", (F,))
    W, b = m.param("W", (H, H)), m.param("b", (H,), init="uniform")
    h0 = L.Dense(H, activation="tanh", name="start")(z)
    seen = []

    def step(h, x_t):
        seen.append(x_t)
        h = sb.tanh(h @ W + b)
        return h, h * 2.0

    hT, ys = sb.scan(step, None, h0, length=T, label="gen")
    assert seen == [None] and ys.shape == (None, T, H) and hT.shape == (None, H)
    m.output("ys", ys)
    m.output("hT", hT)
    m.minimize(sb.mean(ys * ys) + sb.mean(sb.sigmoid(hT)))
    return m


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_scan_without_input_sequence(backend, rng):
    m = generator_model()
    batch = _batch(rng, z=(F,))
    assert sb.gradcheck(m, batch, backend=backend, tolerance=1e-6).ok
    tr = sb.compile(sb.derive(m), backend=backend, dtype="float64", seed=4)
    oracle = sb.compile(sb.derive(unroll(m)), dtype="float64", seed=4)
    got, p = tr.predict(**batch), tr.params
    h, ys = np.tanh(batch["z"] @ p["start_W"] + p["start_b"]), []
    for _ in range(T):
        h = np.tanh(h @ p["W"] + p["b"])
        ys.append(2 * h)
    np.testing.assert_allclose(got["ys"], np.stack(ys, axis=1), atol=1e-12)
    np.testing.assert_allclose(got["hT"], h, atol=1e-12)
    g, go = tr.gradients(**batch), oracle.gradients(**batch)
    for k in g:
        np.testing.assert_allclose(g[k], go[k], atol=1e-12, err_msg=k)


def test_scan_inside_a_step_is_a_clear_error():
    m = sb.Model("nested")
    s = m.input("s", (T, 2, F))

    def outer_step(h, x_t):  # x_t: (batch, 2, F), itself a sequence
        inner, _ = sb.scan(lambda g, y: (g + y, g), x_t, sb.zeros((F,)))
        return h + inner, h

    with pytest.raises(sb.SymbpError, match="scan 'outer'.*'outer_step'.*not supported.*stack the loops"):
        sb.scan(outer_step, s, sb.zeros((F,)), label="outer")

    def layer_step(h, x_t):
        return h + L.GRU(F, return_sequences=False)(x_t), h

    with pytest.raises(sb.SymbpError, match="'layer_step' runs a scan"):
        sb.scan(layer_step, s, sb.zeros((F,)))


def test_bad_plumbing_is_named():
    m = sb.Model("bad")
    x, h, w = m.input("x", (T, F)), m.input("h", (H,)), m.input("w", (H + 1,))
    with pytest.raises(sb.SymbpError, match="layer 'enc': initial_state must be a pair"):
        L.LSTM(H, name="enc")(x, initial_state=h)
    with pytest.raises(sb.SymbpError, match=r"layer 'dec': initial_state 1 must be a float tensor of shape "
                                            r"\(batch, 4\), got \(batch, 5\)"):
        L.LSTM(H, name="dec")(x, initial_state=(h, w))
    with pytest.raises(sb.SymbpError, match="layer 'g': initial_state must be a tensor"):
        L.GRU(H, name="g")(x, initial_state=(h,))
    with pytest.raises(sb.SymbpError, match="layer 'bi'.*recurrent layer"):
        L.Bidirectional(L.Dense(3), name="bi")
    with pytest.raises(sb.SymbpError, match=r"scan 'gen': with no input sequence \(xs=None\).*length=T"):
        sb.scan(lambda c, x: (c, c), None, h, label="gen")
    with pytest.raises(sb.SymbpError, match="scan: length=4 but the sequence has 5 steps"):
        sb.scan(lambda c, x_t: (c, c), x, h, length=4)
