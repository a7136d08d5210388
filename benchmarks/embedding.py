"""Embedding against one_hot @ W at the input of an LSTM: Cython backend, training steps.

The workload of issue 11: windows of T=32 token ids from a V=10k vocabulary, an embedding of
width 64, an LSTM of H=128, batch 32. ``--head last`` predicts the token after the window
(one softmax at the last step, so the input side is what is measured); ``--head every`` is
the language model with a V-wide softmax at every step (there the output side dominates both
versions). Each variant runs in its own worker process (pinned to the same cores, BLAS thread
pools of that size, the default compiler flags) and the two are asked for blocks of timed
steps in turn, as in ``interleave.py``, so both see the same load on a shared machine.
Not part of the test suite.

    python benchmarks/embedding.py --head last --blocks 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T, V, E, H, B = 32, 10_000, 64, 128, 32
VARIANTS = ("embedding", "one_hot")


def model(variant: str, head: str):
    """The LSTM over token ids, its input side an Embedding or ``one_hot(ids, V) @ W``."""
    import symbp as sb

    m = sb.Model(f"tokens_{variant}_{head}")
    ids = m.input("ids", (T,), dtype="int64")
    y = m.input("y", () if head == "last" else (T,), dtype="int64")
    if variant == "embedding":
        x = sb.layers.Embedding(V, E, name="emb")(ids)
    else:
        x = sb.one_hot(ids, V) @ m.param("emb_W", (V, E), init="uniform")
    hs = sb.layers.LSTM(H, name="lstm", return_sequences=head == "every")(x)
    logits = sb.layers.Dense(V, name="out")(hs)
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


def data(head: str) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    return {"ids": rng.integers(0, V, (B, T)), "y": rng.integers(0, V, (B,) if head == "last" else (B, T))}


def serve(variant: str, head: str, threads: int) -> None:
    """Worker: build the variant's Cython trainer, then answer each "N" on stdin with N step times."""
    os.sched_setaffinity(0, set(range(threads)))
    sys.path.insert(0, str(HERE.parent))
    import symbp as sb

    t0 = time.perf_counter()
    tr = sb.compile(sb.derive(model(variant, head)), backend="cython", dtype="float32",
                    optimizer=sb.optim.SGD(lr=0.01), seed=0)
    batch = data(head)
    for _ in range(5):
        tr.step(**batch)
    print(json.dumps({"ready": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        out = []
        for _ in range(int(line)):
            t = time.perf_counter()
            tr.step(**batch)
            out.append(time.perf_counter() - t)
        print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", choices=("last", "every"), default="last")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10, help="steps per block")
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve[0], a.serve[1], int(a.serve[2]))
        return
    env = dict(os.environ, SYMBP_CACHE_DIR=os.environ.get("SYMBP_CACHE_DIR") or tempfile.mkdtemp(prefix="symbp-bench-"))
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(a.threads)
    env.pop("SYMBP_CFLAGS", None)  # the flags users get: -O3 -march=native
    workers = {}
    for v in VARIANTS:
        workers[v] = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", v, a.head,
                                       str(a.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env)
        ready = workers[v].stdout.readline()  # build one at a time: no overlap
        if not ready:
            raise SystemExit(f"{v}: worker failed to start")
        print(f"{v}: built and warmed up in {json.loads(ready)['ready']:.1f} s", flush=True)
    times: dict[str, list[float]] = {v: [] for v in workers}
    for b in range(a.blocks):
        for v in VARIANTS if b % 2 == 0 else VARIANTS[::-1]:
            workers[v].stdin.write(f"{a.steps}\n")
            workers[v].stdin.flush()
            times[v] += json.loads(workers[v].stdout.readline())
    for w in workers.values():
        w.stdin.close()
        w.wait()
    med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    print(f"T={T} V={V} E={E} H={H} B={B} head={a.head} threads={a.threads}, {a.blocks}x{a.steps} steps each")
    for v, t in times.items():
        q = statistics.quantiles(t, n=10)
        print(f"  {v:10s} median {med[v]:8.2f} ms  p10 {q[0] * 1e3:8.2f}  p90 {q[-1] * 1e3:8.2f}  "
              f"min {min(t) * 1e3:8.2f}")
    print(f"  one_hot / embedding: median {med['one_hot'] / med['embedding']:.2f}x, "
          f"min {min(times['one_hot']) / min(times['embedding']):.2f}x")


if __name__ == "__main__":
    main()
