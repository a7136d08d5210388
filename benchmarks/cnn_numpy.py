"""Time one training step of the peers' CNN workload on symbp's NumPy backend.

The workload of ../shared/peers/peers_bench.py: 8x8x1 images, conv 3x3x16 'valid', ReLU,
2x2 max pool, flatten (144), dense 10, softmax cross-entropy, batch 64, SGD lr 0.01,
float32. Like the peers' runs: one thread (BLAS and OpenMP pools set to 1, the process
pinned to one CPU), 5 warm-up steps, then each step timed alone; the median is reported.
When the peers' script is found, its hand-written NumPy step is timed the same way, in the
same process and minute, because this shared machine drifts by up to 1.6x between runs.

Run: python benchmarks/cnn_numpy.py [--seconds 3] [--threads 1] [--peers ../shared/peers]
"""

from __future__ import annotations

import argparse
import os
import sys

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def build():
    import symbp as sb

    L = sb.layers
    m = sb.Model("peers_cnn")
    x = m.input("x", (8, 8, 1))
    y = m.input("y", (), dtype="int64")
    net = L.Sequential([L.Conv2D(16, 3, activation="relu", name="conv"), L.MaxPool2D(2, name="pool"),
                        L.Flatten(name="flat"), L.Dense(10, name="out")])
    m.minimize(sb.softmax_cross_entropy(net(m, x), y))
    return sb.compile(sb.derive(m), optimizer=sb.optim.SGD(lr=0.01), dtype="float32", seed=0)


def time_steps(step, seconds: float) -> list[float]:
    """Per-step wall times in microseconds: 5 warm-up steps, then n = seconds / warm-up median."""
    import statistics
    import time

    warm = []
    for _ in range(5):
        t0 = time.perf_counter()
        step()
        warm.append(time.perf_counter() - t0)
    n = int(min(max(seconds / statistics.median(warm), 30), 5000))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def summary(name: str, us: list[float]) -> str:
    import numpy as np

    q = np.percentile(us, [0, 10, 50, 90])
    return f"{name:<28} n={len(us):5d}  median {q[2]:8.1f} us  (min {q[0]:.1f}, p10 {q[1]:.1f}, p90 {q[3]:.1f})"


def main(seconds: float = 3.0, threads: int = 1, peers: str | None = None) -> float:
    import numpy as np

    tr = build()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 8, 8, 1)).astype(np.float32)
    Y = rng.integers(0, 10, size=64)
    # Time the generated step itself, as the peers time their step functions: the Trainer's
    # data checks (a few us) are outside it.
    data = tr._batch({"x": X, "y": Y}, tr._needs("gradients"), "step")
    k, P, S, H = tr.kernels, tr.params, tr.state, tr.hyper
    us = time_steps(lambda: k.step(P, S, data, H, 1), seconds)
    print(f"threads={threads}  load average {os.getloadavg()[0]:.2f}")
    print(summary("symbp numpy backend", us))
    print(summary("symbp numpy (Trainer.step)", time_steps(lambda: tr.step(x=X, y=Y), seconds / 3)))
    if peers and os.path.exists(os.path.join(peers, "peers_bench.py")):
        sys.path.insert(0, peers)
        import peers_bench

        P0, D = peers_bench.make_problem("cnn")
        impl = peers_bench.NumpyImpl("cnn", P0, D)
        print(summary("peers' hand-written numpy", time_steps(impl.step, seconds)))
    return float(np.median(us))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peers", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                     "shared", "peers"))
    args = ap.parse_args()
    for var in THREAD_VARS:  # before NumPy is imported, so its OpenBLAS pool is sized once
        os.environ[var] = str(args.threads)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
    main(args.seconds, args.threads, args.peers)
