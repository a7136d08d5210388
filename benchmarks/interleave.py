"""Ratios that survive a shared machine: symbp and a peer timed in alternating blocks.

``bench.py`` runs each framework once, one after the other; on a machine shared with other
jobs the load drifts between those runs and the ratio moves with it (JAX's median went from
1.1 to 3.9 ms between two passes here). This script keeps one worker process per framework
alive (each pinned to the same cores, thread pools sized as in ``bench.py``) and asks them
in turn for blocks of timed steps, so both see the same load; the order within each round
alternates. Frameworks in one process would not do: JAX's runtime threads then steal time
from the other's steps. Not part of the test suite.

    python benchmarks/interleave.py --peer-python /tmp/bench-venv/bin/python --blocks 30
    git archive main | tar -x -C /tmp/base    # before/after: --base /tmp/base, base:symbp_cython
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


def serve(fw: str, wl_name: str, threads: int) -> None:
    """Worker: build ``fw``'s step, then answer each "N" on stdin with N step times (JSON)."""
    os.sched_setaffinity(0, set(range(threads)))
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    from workloads import LR, WORKLOADS

    wl = WORKLOADS[wl_name]
    P, D = wl.problem()
    if fw.startswith("symbp"):
        if fw.endswith("_nohoist"):  # e.g. symbp_cython_nohoist: the loop as written (symbp.ops.hoist)
            os.environ["SYMBP_HOIST"] = "0"
        import symbp as sb

        tr = sb.compile(sb.derive(wl.model()), backend=fw.split("_")[1], dtype="float32",
                        optimizer=sb.optim.SGD(lr=LR), params=P)
        step = lambda: tr.step(**D)
    else:
        if fw.startswith("torch"):
            import torch
            torch.set_num_threads(threads)
        step = (wl.torch_nn if fw == "torch_nn" else getattr(wl, fw.split("_")[0]))(P, D)
    for _ in range(50):
        step()
    print("ready", flush=True)
    # cpu: the process's CPU time per step, which other jobs time-sharing the cores barely move
    # (they still share caches and memory bandwidth); only meaningful at 1 thread, and for JAX it
    # counts its runtime's threads too
    clock = time.process_time if os.environ.get("BENCH_CLOCK") == "cpu" else time.perf_counter
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            s = clock()
            step()
            times.append(clock() - s)
        print(json.dumps(times), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="mlp")
    ap.add_argument("--frameworks", default="symbp_cython,jax")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON", "/tmp/bench-venv/bin/python"))
    ap.add_argument("--base", help="a checkout of another commit: base:<framework> runs its symbp (before/after)")
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--steps", type=int, default=100, help="steps per block")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: time steps by the worker's CPU time (a loaded machine; 1 thread)")
    a = ap.parse_args()
    if a.serve:
        serve(a.serve[0], a.serve[1], int(a.serve[2]))
        return
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore",
               SYMBP_CACHE_DIR=os.environ.get("SYMBP_CACHE_DIR") or tempfile.mkdtemp(prefix="symbp-bench-"))
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(a.threads)
    if a.threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env.pop("SYMBP_CFLAGS", None)
    env["BENCH_CLOCK"] = a.clock
    workers = {}
    for fw in a.frameworks.split(","):
        python = sys.executable if fw.startswith(("symbp", "base:")) else a.peer_python
        script = Path(a.base) / "benchmarks" / "interleave.py" if fw.startswith("base:") else Path(__file__)
        # fw+NAME=VALUE: that worker alone runs with NAME set (e.g. symbp_cython+OMP_WAIT_POLICY=PASSIVE)
        name, *extra = fw.split("+")
        workers[fw] = subprocess.Popen([python, str(script.resolve()), "--serve", name.removeprefix("base:"),
                                        a.workload, str(a.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=dict(env, **dict(e.split("=", 1) for e in extra)))
        if workers[fw].stdout.readline().strip() != "ready":  # build one at a time: no overlap
            raise SystemExit(f"{fw}: worker failed to start")
    times: dict[str, list[float]] = {fw: [] for fw in workers}
    names = list(workers)
    for b in range(a.blocks):
        for fw in names if b % 2 == 0 else names[::-1]:
            workers[fw].stdin.write(f"{a.steps}\n")
            workers[fw].stdin.flush()
            times[fw] += json.loads(workers[fw].stdout.readline())
    for w in workers.values():
        w.stdin.close()
        w.wait()
    med = {fw: statistics.median(v) * 1e6 for fw, v in times.items()}
    for fw, v in times.items():
        q = statistics.quantiles(v, n=10)
        # the mean too: a step that waits for a thread another process holds shows in the tail, not the median
        print(f"{a.workload} t={a.threads} {a.clock} {fw:13s} median {med[fw]:7.0f} us  p10 {q[0] * 1e6:7.0f}  "
              f"p90 {q[-1] * 1e6:7.0f}  min {min(v) * 1e6:7.0f}  mean {statistics.fmean(v) * 1e6:7.0f}")
    first = names[0]
    for fw in names[1:]:
        print(f"{first} / {fw}: median {med[first] / med[fw]:.2f}, min {min(times[first]) / min(times[fw]):.2f}")


if __name__ == "__main__":
    main()
