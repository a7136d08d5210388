"""Truncated BPTT against a hand-written detach-every-k loop, for every T (not only multiples
of k), on both backends and in the unrolled oracle; k1 != k2 by hand."""

import numpy as np
import pytest

import symbp as sb
from symbp.autodiff.bptt import unroll

F, H, B = 2, 3, 2
CASES = [(T, k) for T in (1, 2, 3, 5, 7) for k in (1, 2, 3, 4) if k <= T]


def _params(m, tag):
    return (m.param(f"Wx{tag}", (F, H)), m.param(f"Wh{tag}", (H, H)), m.param(f"b{tag}", (H,), init="uniform"))


def truncation_models():
    """Two models over the same inputs and parameter names: every (T, k) of CASES as a scan
    with ``truncate=(k, k)``, and the same loops written out by hand with a stop-gradient on
    the carry every k steps (what ``h = h.detach()`` every k steps does in PyTorch). Each loop
    has its own parameters, so each one's gradients are compared on their own."""
    models = []
    for hand in (False, True):
        m = sb.Model("hand" if hand else "rolled")
        loss = None
        seqs = {T: (m.input(f"s{T}", (T, F)), m.input(f"c{T}", (T, H))) for T in sorted({T for T, _ in CASES})}
        for T, k in CASES:
            s, c = seqs[T]
            Wx, Wh, b = _params(m, f"_{T}_{k}")
            if hand:
                h, part = sb.zeros((H,)), None
                for t in range(T):
                    if t and t % k == 0:
                        h = sb.stop_gradient(h)
                    h = sb.tanh(s[:, t] @ Wx + h @ Wh + b)
                    term = sb.sum(h * c[:, t])
                    part = term if part is None else part + term
            else:
                _, hs = sb.scan(lambda h, x, Wx=Wx, Wh=Wh, b=b: (sb.tanh(x @ Wx + h @ Wh + b),) * 2,
                                s, sb.zeros((H,)), truncate=(k, k), label=f"l{T}_{k}")
                part = sb.sum(hs * c)
            loss = part if loss is None else loss + part
        m.minimize(loss)
        models.append(m)
    return models


@pytest.fixture(scope="module")
def truncation_case():
    rolled, hand = truncation_models()
    rng = np.random.default_rng(3)
    batch = {}
    for T in sorted({T for T, _ in CASES}):
        batch[f"s{T}"], batch[f"c{T}"] = rng.normal(size=(B, T, F)), rng.normal(size=(B, T, H))
    ref = sb.compile(sb.derive(hand), dtype="float64", seed=1)
    return rolled, batch, ref.loss(**batch), ref.gradients(**batch)


@pytest.mark.parametrize("how", ["numpy", "cython", "unrolled"])
def test_truncate_k_k_is_detach_every_k(how, truncation_case):
    rolled, batch, ref_loss, ref = truncation_case
    model = unroll(rolled) if how == "unrolled" else rolled
    tr = sb.compile(sb.derive(model), backend="numpy" if how == "unrolled" else how, dtype="float64", seed=1)
    assert tr.loss(**batch) == pytest.approx(ref_loss, rel=1e-12)
    got = tr.gradients(**batch)
    for T, k in CASES:
        for p in ("Wx", "Wh", "b"):
            name = f"{p}_{T}_{k}"
            np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-12, err_msg=f"T={T} k={k} {name}")


# h = 1, 1.5, 1.75, 1.875; within a window starting at step a, dh_t/dw = h_{t-1} + w dh_{t-1}/dw,
# starting from 0 at a (the carry entering the window is a constant).
BY_HAND = {
    (2, 2): 0 + 1 + 1.5 + 2.5 + 1.875,      # chunks {0,1} {2,3} {4}: step 4 sees itself only
    (2, 3): 0 + 1 + 2 + 2.75 + 2.75,        # windows 0.., 1.., 3..: one step before each chunk
    (3, 2): 1 + 2 + 1.75 + 2.75,            # chunks {0,1,2} {3,4}, windows 1.., 3..: step 0 dropped
    (1, 2): 0 + 1 + 2 + 2.5 + 2.75,         # every step, back two
    (4, 2): 1.5 + 2.5 + 1.875,              # chunks {0..3} {4}: windows 2.., 4..
}


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_k1_k2_by_hand_when_T_is_not_a_multiple(backend, monkeypatch):
    """h_t = x_t + w h_{t-1} with x = 1 and w = 0.5, loss = sum_t h_t, T = 5: one loop (and
    its own w) per truncation. Cython at the flags users get (-O3 -march=native)."""
    monkeypatch.delenv("SYMBP_CFLAGS", raising=False)
    m = sb.Model("lin")
    s = m.input("s", (5, 1))
    loss = None
    for k, truncate in enumerate(BY_HAND):
        w = m.param(f"w{k}", (1, 1), init=0.5)
        _, hs = sb.scan(lambda h, x, w=w: (x + h @ w,) * 2, s, sb.zeros((1,)), truncate=truncate, label=f"l{k}")
        loss = sb.sum(hs) if loss is None else loss + sb.sum(hs)
    m.minimize(loss)
    g = sb.compile(sb.derive(m), backend=backend, dtype="float64").gradients(s=np.ones((1, 5, 1)))
    for k, (truncate, expected) in enumerate(BY_HAND.items()):
        assert g[f"w{k}"][0, 0] == pytest.approx(expected, abs=1e-12), truncate
