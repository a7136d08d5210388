"""Side-by-side training-step benchmark: symbp (numpy, cython) vs PyTorch eager (and torch.nn.RNN /
nn.LSTM for the recurrent workloads) and JAX jit.

Each (framework, workload, threads) runs in a fresh subprocess pinned to ``threads`` cores
with every thread pool set to that size. symbp runs use this interpreter (the repository on
PYTHONPATH); the peers run in a separate environment given by ``--peer-python`` (torch and
jax are never installed into symbp's own). Reported per row: median and min microseconds per
step (after warm-up), the cold start (model construction + derive + compile + first step, with
an empty compile cache) and, for symbp, the cached start (the same in a new process with the
cache warm). Not part of the test suite.

    python benchmarks/bench.py --peer-python /tmp/bench-venv/bin/python --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYMBP = ("symbp_numpy", "symbp_cython")
PEERS = ("torch_eager", "torch_nn", "jax")


def worker(fw: str, wl_name: str, threads: int, target: float) -> dict:
    """Time one framework on one workload in this process; returns the result row."""
    os.sched_setaffinity(0, set(range(threads)))
    sys.path.insert(0, str(HERE))
    t0 = time.perf_counter()
    if fw.startswith("torch"):
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    elif fw == "jax":
        import jax  # noqa: F401
    else:
        sys.path.insert(0, str(ROOT))
        import symbp  # noqa: F401
    t_import = time.perf_counter() - t0
    from workloads import WORKLOADS

    wl = WORKLOADS[wl_name]
    P, D = wl.problem()
    t0 = time.perf_counter()
    if fw.startswith("symbp"):
        import symbp as sb

        tr = sb.compile(sb.derive(wl.model()), backend=fw.split("_")[1], dtype="float32",
                        optimizer=sb.optim.SGD(lr=0.01), params=P)
        step = lambda: tr.step(**D)
    else:
        build = wl.torch_nn if fw == "torch_nn" else getattr(wl, fw.split("_")[0])
        if build is None:
            raise SystemExit(f"{fw} has no {wl_name} workload")
        step = build(P, D)
    loss0 = step()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(10):
        s = time.perf_counter()
        step()
        warm.append(time.perf_counter() - s)
    n = int(min(max(50, target / statistics.median(warm)), 3000))
    times = []
    for _ in range(n):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    return dict(fw=fw, wl=wl_name, threads=threads, n=n, median_us=statistics.median(times) * 1e6,
                min_us=min(times) * 1e6, first_s=first, import_s=t_import, loss0=float(loss0))


def run(fw: str, wl: str, threads: int, python: str, target: float, cache: str) -> dict | None:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env.update(JAX_PLATFORMS="cpu", SYMBP_CACHE_DIR=cache, PYTHONWARNINGS="ignore")
    env.pop("SYMBP_CFLAGS", None)
    cmd = [python, str(Path(__file__).resolve()), "--worker", fw, wl, str(threads), str(target)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    last = [line for line in res.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
    print(f"  {fw}/{wl}: failed: {last[0][:300]}", file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default="mlp")
    ap.add_argument("--frameworks", default=",".join(SYMBP + PEERS))
    ap.add_argument("--threads", default="1")
    ap.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON", "/tmp/bench-venv/bin/python"))
    ap.add_argument("--target-sec", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the whole pass; report each row's round with the lowest median (a shared "
                         "machine's load comes and goes; interleaving keeps the frameworks' chances even)")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    if a.worker:
        fw, wl, threads, target = a.worker
        print("RESULT " + json.dumps(worker(fw, wl, int(threads), float(target))), flush=True)
        return
    rows = []
    for _ in range(a.rounds):
        rows += one_pass(a)
    best: dict = {}
    for r in rows:
        k = (r["threads"], r["wl"], r["fw"])
        if k not in best or r["median_us"] < best[k]["median_us"]:
            best[k] = r
    rows = list(best.values())
    if a.json_out:
        with open(a.json_out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(table(rows))


def one_pass(a) -> list[dict]:
    """Every (threads, workload, framework) once, each in fresh processes."""
    rows = []
    for threads in map(int, a.threads.split(",")):
        for wl in a.workloads.split(","):
            for fw in a.frameworks.split(","):
                python = sys.executable if fw in SYMBP else a.peer_python
                if fw not in SYMBP and not Path(python).exists():
                    print(f"  {fw}: no peer environment at {python}; skipped", file=sys.stderr)
                    continue
                cache = tempfile.mkdtemp(prefix="symbp-bench-")
                try:
                    row = run(fw, wl, threads, python, a.target_sec, cache)
                    if row and fw == "symbp_cython":  # the same again, cache warm: the cached start
                        warm = run(fw, wl, threads, python, 0.05, cache)
                        row["cached_first_s"] = warm["first_s"] if warm else None
                finally:
                    shutil.rmtree(cache, ignore_errors=True)
                if row:
                    rows.append(row)
                    print(f"  {fw:14s} {wl:5s} t={threads} median {row['median_us']:8.0f} us  "
                          f"min {row['min_us']:8.0f} us  cold start {row['first_s']:.2f} s", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per (workload, threads, framework), with ratios to each peer."""
    peers = [p for p in PEERS if any(r["fw"] == p for r in rows)]
    head = ["workload", "threads", "framework", "median us", "min us"] + [f"x {p}" for p in peers]
    head += ["cold start s", "cached start s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref = {p: next((q["median_us"] for q in rows if q["fw"] == p and q["wl"] == r["wl"]
                        and q["threads"] == r["threads"]), None) for p in peers}
        cells = [r["wl"], str(r["threads"]), r["fw"], f"{r['median_us']:.0f}", f"{r['min_us']:.0f}"]
        cells += [f"{r['median_us'] / ref[p]:.2f}" if ref[p] else "-" for p in peers]
        cells += [f"{r['first_s']:.2f}", f"{r['cached_first_s']:.2f}" if r.get("cached_first_s") else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
