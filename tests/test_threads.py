"""The Cython backend at 2 OpenMP threads against the NumPy backend: products big enough to open
a parallel region (``sb_mm``: M*N*K >= 2^20) in an MLP, around a recurrence's loop and inside its
time steps (32 x 256 x 256, forward and reverse), once with two cores and once with both threads
pinned to one core, where the helper thread starts late and ``sb_mm`` falls back to one thread
for a while. OpenMP reads OMP_NUM_THREADS when it is loaded, so each case runs in its own
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("Cython")

SCRIPT = r"""
import json, os, sys
import numpy as np
import symbp as sb

if sys.argv[1] == "one-core":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
F, H, T, B = 64, 256, 8, 32
m = sb.Model("threads")
x, y = m.input("x", (T, F)), m.input("y", (T,), dtype="int64")
W, U, b = m.param("W", (F, H)), m.param("U", (H, H)), m.param("b", (H,))
_, hs = sb.scan(lambda h, u: (lambda h2: (h2, h2))(sb.tanh(u + h @ U)), x @ W + b, sb.zeros((H,)))
z = sb.relu(hs @ m.param("W1", (H, 256)))  # (T*B) x 256 x 256: one region per product
m.minimize(sb.softmax_cross_entropy(z @ m.param("W2", (256, 32)), y))
d = sb.derive(m)
rng = np.random.default_rng(0)
batch = {"x": rng.normal(size=(B, T, F)), "y": rng.integers(0, 32, (B, T))}
kw = dict(dtype="float64", seed=3, optimizer=sb.optim.SGD(lr=0.05))
tn, tc = sb.compile(d, backend="numpy", **kw), sb.compile(d, backend="cython", **kw)
worst = 0.0
for _ in range(3):
    for k, g in tn.gradients(**batch).items():
        worst = max(worst, float(np.max(np.abs(tc.gradients(**batch)[k] - g)) / np.max(np.abs(g))))
    tn.step(**batch), tc.step(**batch)
for k in tn.params:
    worst = max(worst, float(np.max(np.abs(tc.params[k] - tn.params[k]))))
print(json.dumps(worst))
"""


@pytest.mark.parametrize("cores", ["two-cores", "one-core"])
def test_two_threads_match_numpy(cores, tmp_path):
    if cores == "two-cores" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("SYMBP_OPENMP", None)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", SCRIPT, cores], env=env, cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) < 1e-10
