"""ADBench / GradBench ``lstm``: time symbp's compiled gradient (float64, 1 thread) against the
reference gradient and Tapenade's times in ../shared/adbench-lstm/README.md. Not a test.

    python benchmarks/adbench_lstm.py --cases 2x1024,4x4096 --backend cython
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TAPENADE_MS = {(2, 1024): 6.4, (4, 1024): 11.8, (2, 4096): 24.0, (4, 4096): 65.8}


def case(layers: int, c: int, backend: str, repeat: float) -> dict:
    """Derive + compile (timed), check the gradient against the reference, time gradients()."""
    sys.path.insert(0, str(ROOT))
    import symbp as sb
    from tests.test_scan_adbench import DATA, adbench_model

    data = np.load(DATA / f"lstm_l{layers}_c{c}.npz")
    ref = np.load(DATA / f"lstm_l{layers}_c{c}_grad.npy")
    main, extra, state, seq = data["main_params"], data["extra_params"], data["state"], data["sequence"]
    params = {f"w{i}": main[2 * i] for i in range(layers)} | {f"u{i}": main[2 * i + 1] for i in range(layers)}
    params |= {f"extra{j}": extra[j] for j in range(3)}
    batch = {"x": seq[None, :-1], "target": seq[None, 1:]}
    batch |= {f"{k}{i}": state[None, 2 * i + j] for i in range(layers) for j, k in enumerate(("h", "s"))}
    t0 = time.perf_counter()
    tr = sb.compile(sb.derive(adbench_model(layers, c)), backend=backend, dtype="float64", params=params)
    compile_s = time.perf_counter() - t0
    checked = tr._batch(batch, tr.kernels.NEEDS["gradients"], "gradients")
    P = dict(tr.params)

    def grad():
        return tr.kernels.gradients(P, checked, tr.workspace)  # the generated function itself, as the peers time theirs

    _, g = grad()
    ours = np.concatenate([np.stack([g[f"{k}{i}"] for i in range(layers) for k in ("w", "u")]).ravel(),
                           np.stack([g[f"extra{j}"] for j in range(3)]).ravel()])
    err = float(np.abs(ours - ref).max())
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < repeat or len(times) < 20:
        s = time.perf_counter()
        grad()
        times.append(time.perf_counter() - s)
    return dict(l=layers, c=c, backend=backend, median_ms=statistics.median(times) * 1e3,
                min_ms=min(times) * 1e3, n=len(times), compile_s=compile_s, max_abs_err=err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="2x1024,4x4096")
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--repeat-sec", type=float, default=3.0)
    a = ap.parse_args()
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # 1 thread, as the reference times
        os.environ.setdefault(k, "1")
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    print("| l | c | backend | median ms | min ms | Tapenade ms | x Tapenade | derive+compile s | max abs err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in a.cases.split(","):
        layers, c = map(int, spec.split("x"))
        r = case(layers, c, a.backend, a.repeat_sec)
        tap = TAPENADE_MS[(layers, c)]
        print(f"| {layers} | {c} | {a.backend} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {tap} | "
              f"{r['median_ms'] / tap:.2f} | {r['compile_s']:.2f} | {r['max_abs_err']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
