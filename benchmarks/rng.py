"""The cost of dropout's random numbers per million, on each backend. Not a test.

Times (fastest of --repeat calls) ``tr.loss`` of ``sum(dropout(x * W))`` against ``sum(x * W)`` over N numbers (one
example of N features): the difference is the mask (Philox-4x64-10, 32 bits a number, the
keep test and the scale) and its product. Also times ``numpy.random.Philox.random_raw`` alone,
the generator the NumPy backend calls.

    python benchmarks/rng.py --n 1000000 --repeat 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def model(n: int, rate: float):
    import symbp as sb

    m = sb.Model(f"rng_bench_{'drop' if rate else 'plain'}")
    x = m.input("x", (n,))
    h = x * m.param("W", (n,), init="ones")
    m.minimize(sb.sum(sb.dropout(h, rate) if rate else h))
    return sb.derive(m)


def best_ms(fn, repeat: int) -> float:
    """The fastest of ``repeat`` calls (on a shared machine the median drifts with the load)."""
    fn()  # warm: buffers allocated
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="random numbers per call")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import symbp as sb

    X = np.ones((1, args.n))
    per_million = 1e6 / args.n
    raw = best_ms(lambda: np.random.Philox(key=1, counter=[0, 0, 1, 0]).random_raw(args.n // 2), args.repeat)
    print(f"numpy.random.Philox.random_raw alone: {raw * per_million:.2f} ms per million 32-bit numbers")
    for backend in ("numpy", "cython"):
        plain, drop = (sb.compile(model(args.n, r), backend=backend, dtype=args.dtype) for r in (0.0, 0.5))
        t_plain = best_ms(lambda tr=plain: tr.loss(x=X), args.repeat)
        t_drop = best_ms(lambda tr=drop: tr.loss(x=X), args.repeat)
        print(f"{backend:>7}: loss {t_plain:.2f} ms without dropout, {t_drop:.2f} ms with: "
              f"{(t_drop - t_plain) * per_million:.2f} ms per million numbers ({args.dtype})")


if __name__ == "__main__":
    main()
