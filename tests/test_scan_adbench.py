"""ADBench / GradBench `lstm`: a 2-layer diagonal LSTM over 1,023 steps, objective and gradient
against the benchmark's reference files (float64, NumPy and Cython backends, to 1e-10)."""

import json
from pathlib import Path

import numpy as np
import pytest

import symbp as sb

DATA = Path("/work/shared/adbench-lstm")


def adbench_model(layers: int, c: int, b: int = 14) -> sb.Model:
    """The benchmark's objective, one scan over t = 0..c-2 (see DATA/README.md)."""
    m = sb.Model("adbench_lstm")
    xin, target = m.input("x", (c - 1, b)), m.input("target", (c - 1, b))
    init = tuple(m.input(f"{k}{i}", (b,)) for i in range(layers) for k in ("h", "s"))
    w = [m.param(f"w{i}", (4 * b,)) for i in range(layers)]
    u = [m.param(f"u{i}", (4 * b,)) for i in range(layers)]
    extra = [m.param(f"extra{j}", (b,)) for j in range(3)]

    def step(state, xs):
        x, y = xs
        x = x * extra[0]
        new = []
        for i in range(layers):  # every layer reads the old state
            h, s = state[2 * i], state[2 * i + 1]
            gates = sb.concat([x, h, x, h], axis=-1) * w[i] + u[i]
            f, ig, o = (sb.sigmoid(gates[:, k * b:(k + 1) * b]) for k in range(3))
            s = s * f + ig * sb.tanh(gates[:, 3 * b:])
            h = o * sb.tanh(s)
            new += [h, s]
            x = h
        pred = x * extra[1] + extra[2]
        ynorm = pred - sb.log(2.0 + sb.sum(sb.exp(pred), axis=-1, keepdims=True))
        return tuple(new), sb.sum(y * ynorm, axis=-1)

    _, totals = sb.scan(step, (xin, target), init, label="lstm")
    m.minimize(-sb.sum(totals) / ((c - 1) * b))
    return m


@pytest.mark.skipif(not DATA.exists(), reason="ADBench reference files not present")
@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_adbench_lstm_l2_c1024_objective_and_gradient(backend):
    layers, c = 2, 1024
    data = np.load(DATA / f"lstm_l{layers}_c{c}.npz")
    ref_grad = np.load(DATA / f"lstm_l{layers}_c{c}_grad.npy")
    ref_obj = json.loads((DATA / "reference_objectives.json").read_text())[f"lstm_l{layers}_c{c}"]["objective"]
    main, extra, state, seq = data["main_params"], data["extra_params"], data["state"], data["sequence"]
    params = {f"w{i}": main[2 * i] for i in range(layers)} | {f"u{i}": main[2 * i + 1] for i in range(layers)}
    params |= {f"extra{j}": extra[j] for j in range(3)}
    batch = {"x": seq[None, :-1], "target": seq[None, 1:]}
    batch |= {f"{k}{i}": state[None, 2 * i + j] for i in range(layers) for j, k in enumerate(("h", "s"))}
    if backend == "cython":
        pytest.importorskip("Cython")
    tr = sb.compile(sb.derive(adbench_model(layers, c)), backend=backend, dtype="float64", params=params)
    assert abs(tr.loss(**batch) - ref_obj) < 1e-12
    g = tr.gradients(**batch)
    ours = np.concatenate([np.stack([g[f"{k}{i}"] for i in range(layers) for k in ("w", "u")]).ravel(),
                           np.stack([g[f"extra{j}"] for j in range(3)]).ravel()])
    np.testing.assert_allclose(ours, ref_grad, rtol=0, atol=1e-10)
