"""Hand-written cells against the unrolled oracle: carries that shift, swap or rotate, and
cells whose kernels need scalar temporaries next to several captured weights."""

import numpy as np
import pytest

import symbp as sb
from symbp.autodiff.bptt import unroll

F, H, B, T = 2, 3, 3, 5


def _shift(W, U, V):
    """Second order: (h_{t-1}, h_{t-2}) -> (h_t, h_{t-1})."""
    def step(c, x):
        a, b = c
        new = sb.tanh(x @ W + a @ U + b @ V)
        return (new, a), new
    return step, 2


def _swap(W, U, V):
    """(a, b) -> (b, n): d_b is d_carry_out[0] itself, so the reverse loop must not overwrite
    that before reading it."""
    def step(c, x):
        a, b = c
        n = sb.tanh(x @ W + a @ U) @ V
        return (b, n), n
    return step, 2


def _rotate(W, U, V):
    """Three carries rotating one place per step, plus a fresh value."""
    def step(c, x):
        a, b, d = c
        n = sb.tanh(x @ W + d @ U) * sb.sigmoid(a @ V)
        return (b, d, n + a), n
    return step, 3


def _gelu(W, U, V):
    """Two gelus (scalar temporaries in the kernels) and three captured weights."""
    def step(h, x):
        h = (sb.gelu(x @ W) + sb.gelu(h @ U)) @ V
        return h, h
    return step, 1


CELLS = {"shift": _shift, "swap": _swap, "rotate": _rotate, "gelu": _gelu}


def cell_model(kind: str, truncate=None) -> sb.Model:
    m = sb.Model(kind)
    s, y = m.input("s", (T, F)), m.input("y", (H,))
    W, U, V = m.param("W", (F, H)), m.param("U", (H, H)), m.param("V", (H, H))
    step, nc = CELLS[kind](W, U, V)
    init = sb.zeros((H,)) if nc == 1 else tuple(sb.zeros((H,)) for _ in range(nc))
    last, hs = sb.scan(step, s, init, truncate=truncate)
    total = last if nc == 1 else sum(last[1:], last[0])
    m.minimize(sb.mse(total, y) + sb.mean(hs * hs))
    return m


@pytest.mark.parametrize("truncate", [None, (2, 3)])
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_hand_written_cells_match_unrolled(kind, truncate, rng):
    m = cell_model(kind, truncate)
    batch = {"s": rng.normal(size=(B, T, F)), "y": rng.normal(size=(B, H))}
    rolled = sb.compile(sb.derive(m), dtype="float64", seed=2)
    unrolled = sb.compile(sb.derive(unroll(m)), dtype="float64", params=dict(rolled.params))
    assert rolled.loss(**batch) == pytest.approx(unrolled.loss(**batch), abs=1e-12)
    g1, g2 = rolled.gradients(**batch), unrolled.gradients(**batch)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=0, atol=1e-10, err_msg=f"{kind} {truncate} {k}")
