"""One-step-ahead prediction of the chaotic Mackey-Glass series with SimpleRNN, GRU and LSTM,
and how each one's gradient ||dL/dh_t|| decays back through time (saved as a PNG when
matplotlib is installed).

Run: python examples/time_series.py [--steps 300] [--png time_series_gradnorms.png]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small per-step products: one BLAS thread
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import symbp as sb  # noqa: E402


def mackey_glass(n: int, tau: int = 17, beta: float = 0.2, gamma: float = 0.1, p: int = 10,
                 sub: int = 10) -> np.ndarray:
    """dx/dt = beta x(t - tau) / (1 + x(t - tau)^p) - gamma x(t), Euler steps of 1/sub, sampled each 1."""
    dt, lag = 1.0 / sub, tau * sub
    x = np.full(n * sub + lag, 1.2)
    for i in range(lag, len(x) - 1):
        d = x[i - lag]
        x[i + 1] = x[i] + dt * (beta * d / (1 + d ** p) - gamma * x[i])
    s = x[lag::sub][:n]
    return (s - s.mean()) / s.std()


def windows(series: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(series) - T)[:, None] + np.arange(T)[None, :]
    return series[idx][..., None], series[idx[:, -1] + 1][:, None]


def build(kind: str, T: int, hidden: int) -> sb.Model:
    m = sb.Model(f"mg_{kind.lower()}")
    s = m.input("s", (T, 1))
    y = m.input("y", (1,))
    h = getattr(sb.layers, kind)(hidden, return_sequences=False, name=kind.lower())(m, s)
    pred = sb.layers.Dense(1, name="out")(m, h)
    m.output("pred", pred)
    m.minimize(sb.mse(pred, y))
    return m


def main(steps: int = 300, T: int = 48, hidden: int = 16, batch: int = 32, png: str | None = None,
         seed: int = 0) -> dict:
    series = mackey_glass(1500)
    X, Y = windows(series, T)
    split = int(0.8 * len(X))
    rng = np.random.default_rng(seed)
    results, norms = {}, {}
    for kind in ("SimpleRNN", "GRU", "LSTM"):
        t0 = time.perf_counter()
        tr = sb.compile(sb.derive(build(kind, T, hidden)), optimizer=sb.optim.Adam(lr=1e-2, clip_norm=1.0),
                        seed=seed)
        built = time.perf_counter() - t0
        for _ in range(steps):
            i = rng.integers(0, split, batch)
            tr.step(s=X[i], y=Y[i])
        test = float(np.mean((tr.predict(s=X[split:])["pred"] - Y[split:]) ** 2))
        norms[kind] = tr.gradient_norms_through_time(s=X[:batch], y=Y[:batch])[kind.lower()]
        results[kind] = test
        print(f"{kind:10s} built in {built:.2f} s, {steps} steps in {time.perf_counter() - t0 - built:.1f} s: "
              f"test MSE {test:.5f}; ||dL/dh_t|| at t = 0 / t = T-1: {norms[kind][0] / norms[kind][-1]:.2e}")
    if png:
        try:
            from symbp.show.plots import plot_gradient_norms

            print("saved", plot_gradient_norms(norms, png, f"Mackey-Glass, T = {T}: gradient norm through time"))
        except sb.SymbpError as e:
            print(f"no plot: {e}")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--png", default="time_series_gradnorms.png")
    args = ap.parse_args()
    main(args.steps, png=args.png)
