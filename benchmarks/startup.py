"""Start-up cost, measured in new processes: median wall and CPU seconds of N runs each.

    python benchmarks/startup.py [--runs 10]

- ``import``: ``import symbp`` alone;
- ``warm``: a cached start, as DESIGN.md's snippet runs it: import, build the MLP, compile
  with the Cython backend from a warm cache (built by one run first), one step;
- ``cold mlp`` / ``cold lstm``: import, build a workload of benchmarks/workloads.py, derive,
  generate and load NumPy code, one step (BLAS on one thread, so CPU time is work, not spinning).

Uses the cache in $SYMBP_CACHE_DIR (as symbp does). Start-up is measured here, never asserted
in tests; tests/test_startup.py checks what a warm start must not load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

WARM = """
import numpy as np
import symbp as sb
m = sb.Model("mlp")
x = m.input("x", (64,))
y = m.input("y", (), dtype="int64")
W1 = m.param("W1", (64, 256), init="glorot_uniform")
b1 = m.param("b1", (256,), init="zeros")
h = sb.tanh(x @ W1 + b1)
logits = h @ m.param("W2", (256, 10)) + m.param("b2", (10,), init="zeros")
m.minimize(sb.softmax_cross_entropy(logits, y))
tr = sb.compile(sb.derive(m), backend="cython", optimizer=sb.optim.SGD(lr=0.1), dtype="float32", seed=0)
rng = np.random.default_rng(0)
tr.step(x=rng.standard_normal((32, 64)).astype(np.float32), y=rng.integers(0, 10, 32))
"""

COLD = """
import sys
sys.path.insert(0, {here!r})
import symbp as sb
import workloads as w
P, D = w.{name}_problem()
tr = sb.compile(sb.derive(w.{name}_model()), backend="numpy", optimizer=sb.optim.SGD(lr=0.01), params=P)
tr.step(**D)
"""

CASES = {"import": "import symbp", "warm": WARM,
         "cold mlp": COLD.format(here=str(HERE), name="mlp"), "cold lstm": COLD.format(here=str(HERE), name="lstm")}


def run(code: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one new process running ``code``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=HERE.parent)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    run(WARM)  # fills the cache (and the interpreter's bytecode caches) first
    print(f"{'case':<12}{'wall s':>10}{'CPU s':>10}   (median of {args.runs} new processes)")
    for name, code in CASES.items():
        walls, cpus = zip(*(run(code) for _ in range(args.runs)))
        print(f"{name:<12}{statistics.median(walls):>10.3f}{statistics.median(cpus):>10.3f}")


if __name__ == "__main__":
    main()
