"""Data-parallel scaling: 1 against 2 ranks on this machine, symbp over MPI next to PyTorch
DistributedDataParallel (gloo), and on paper at 8-64 machines. Not part of the test suite.

Workloads: the MLP and LSTM of ``workloads.py`` (float32, SGD), with the GLOBAL batch of the
workload (128 and 32 examples) cut into one part per rank, so steps per second are steps of
the same global batch: the speed-up is how much faster one model trains. Every rank runs one
thread (OMP/OPENBLAS/MKL threads = 1, torch.set_num_threads(1)) pinned to its own core. Each
figure is the median of ``--repeats`` timings of ``--steps`` steps (the machine is shared).

    python benchmarks/mpi.py                          # symbp (cython and numpy backends)
    python benchmarks/mpi.py --torch-python /tmp/torch-venv/bin/python   # and PyTorch DDP

The paper estimate (printed at the end of a run) models a step on P machines as compute / P
+ the sum of the gradient buffer (S bytes). Beyond 4 ranks symbp sums with ``Allreduce``
(Rabenseifner's reduce-scatter + allgather: 2 S (P-1)/P bytes per rank, 2 log2(P) latencies)
and then ``Bcast`` of rank 0's result (another ~S (P-1)/P pipelined, log2(P) latencies), so
3 S (P-1)/P / bandwidth + 3 log2(P) latencies (codegen/runtime/distributed.py says why).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKLOADS = ("mlp", "lstm")
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
NETWORKS = {  # name: (bandwidth in bytes/s, latency of one message in s)
    "10 GbE (TCP)": (1.25e9, 30e-6),
    "100 Gb/s InfiniBand": (12.5e9, 2e-6),
}


def _pin(rank: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[rank % len(cores)]})


def _time(step, steps: int, repeats: int, sync) -> list[float]:
    for _ in range(5):
        step()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out.append(steps / (time.perf_counter() - t0))
    return out


def symbp_worker(backend: str, workload: str, steps: int, repeats: int) -> None:
    """One rank of ``mpiexec -n R python mpi.py --worker symbp_<backend> ...``; rank 0 prints a JSON row."""
    sys.path[:0] = [str(HERE), str(ROOT)]
    from mpi4py import MPI
    from workloads import WORKLOADS as W

    import symbp as sb
    from codegen.runtime.distributed import shard

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    _pin(rank)
    P, D = W[workload].problem()
    tr = sb.compile(sb.derive(W[workload].model()), backend=backend, dtype="float32", params=P,
                    optimizer=sb.optim.SGD(lr=0.01), distributed="mpi" if size > 1 else None)
    part = shard(len(D["y"]), rank, size)
    local = {k: v[part] for k, v in D.items()}
    rates = _time(lambda: tr.step(**local), steps, repeats, comm.Barrier)
    row = {"framework": f"symbp_{backend}", "workload": workload, "ranks": size,
           "steps_per_s": statistics.median(rates),
           "grad_bytes": int(sum(v.nbytes for v in tr.params.values()))}
    if size > 1:  # the reduction alone, on the step's own buffer
        send, recv, _, _ = tr.dist._buffers(tr)
        row["reduce_us"] = 1e6 / statistics.median(_time(lambda: tr.dist._reduce(send, recv), 200, repeats,
                                                         comm.Barrier))
    if rank == 0:
        print(json.dumps(row), flush=True)


def torch_worker(rank: int, size: int, workload: str, steps: int, repeats: int, port: int) -> None:
    """One rank of PyTorch DDP (gloo) on the same workload; rank 0 prints a JSON row."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from workloads import BM, BR, H, T, V

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    _pin(rank)
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if workload == "mlp":
        net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(),
                                  torch.nn.Linear(256, 10))
        X, y = torch.from_numpy(rng.standard_normal((BM, 64)).astype(np.float32)), torch.from_numpy(
            rng.integers(0, 10, BM))

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)
    else:
        X = torch.from_numpy(np.eye(V, dtype=np.float32)[rng.integers(0, V, (BR, T))])
        y = torch.from_numpy(rng.integers(0, V, (BR, T)))

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn, self.out = torch.nn.LSTM(V, H, batch_first=True), torch.nn.Linear(H, V)

            def forward(self, x):
                return self.out(self.rnn(x)[0])
    model = Net()
    if size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    n = len(y)
    lo, hi = rank * n // size, (rank + 1) * n // size
    Xl, yl = X[lo:hi], y[lo:hi]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(Xl)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yl.reshape(-1))
        loss.backward()
        opt.step()

    rates = _time(step, steps, repeats, dist.barrier if size > 1 else (lambda: None))
    if rank == 0:
        print(json.dumps({"framework": "torch_ddp_gloo", "workload": workload, "ranks": size,
                          "steps_per_s": statistics.median(rates)}), flush=True)
    if size > 1:
        dist.barrier()  # every rank done before gloo is torn down (it aborted otherwise, now and then)
        dist.destroy_process_group()


def _torch_main(args) -> None:
    import torch.multiprocessing as mp

    port = 29500 + os.getpid() % 1000
    if args.ranks == 1:
        torch_worker(0, 1, args.workload, args.steps, args.repeats, port)
    else:
        mp.spawn(torch_worker, args=(args.ranks, args.workload, args.steps, args.repeats, port), nprocs=args.ranks)


def _run(cmd: list[str]) -> dict | None:
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **THREADS}, timeout=1800)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode or not rows:
        print(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return rows[0]


def paper(step_s: dict, grad_bytes: dict) -> list[str]:
    """Estimated speed-ups at 8-64 machines from a 1-rank step time and the gradient bytes."""
    lines = []
    for wl, t1 in step_s.items():
        S = grad_bytes[wl]
        lines.append(f"{wl}: one step on one core {t1 * 1e3:.2f} ms, gradient buffer {S / 1e3:.0f} kB")
        for net, (bw, lat) in NETWORKS.items():
            cells = []
            for P in (8, 16, 32, 64):
                comm = 3 * S * (P - 1) / P / bw + 3 * math.log2(P) * lat
                strong = t1 / (t1 / P + comm)  # the same global batch cut P ways
                weak = P * t1 / (t1 + comm)  # each machine keeps the 1-rank batch: examples/s
                cells.append(f"P={P}: x{strong:.1f} / x{weak:.1f} (comm {comm * 1e6:.0f} us)")
            lines.append(f"  {net}: " + "; ".join(cells))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="mlp", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3, help="runs of every configuration (median over them)")
    ap.add_argument("--backends", default="cython,numpy")
    ap.add_argument("--torch-python", help="a Python with torch (CPU) for the DDP rows")
    args = ap.parse_args()
    if args.worker == "torch":
        return _torch_main(args)
    if args.worker:
        return symbp_worker(args.worker.split("_", 1)[1], args.workload, args.steps, args.repeats)
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    timing = ["--steps", str(args.steps), "--repeats", str(args.repeats)]
    commands = []
    for wl in WORKLOADS:
        for backend in args.backends.split(","):
            commands += [[mpiexec, "-n", str(r), sys.executable, __file__, "--worker", f"symbp_{backend}",
                          "--workload", wl, *timing] for r in (1, 2)]
        if args.torch_python:
            commands += [[args.torch_python, __file__, "--worker", "torch", "--workload", wl, "--ranks", str(r),
                          *timing] for r in (1, 2)]
    # rounds over every configuration, 1 and 2 ranks next to each other: the load of a shared
    # machine drifts over minutes, so each figure is the median over rounds
    runs = [[_run(c) for c in commands] for _ in range(args.rounds)]
    rows = []
    for k in range(len(commands)):
        got = [r[k] for r in runs if r[k]]
        if got:
            medians = {key: statistics.median(g[key] for g in got) for key in ("steps_per_s", "reduce_us")
                       if key in got[0]}
            rows.append({**got[0], **medians})
    one = {(r["framework"], r["workload"]): r["steps_per_s"] for r in rows if r["ranks"] == 1}
    print(f"{'framework':<16}{'workload':<10}{'ranks':>6}{'steps/s':>10}{'speed-up':>10}{'reduce us':>11}")
    for r in rows:
        base = one.get((r["framework"], r["workload"]))
        print(f"{r['framework']:<16}{r['workload']:<10}{r['ranks']:>6}{r['steps_per_s']:>10.1f}"
              f"{r['steps_per_s'] / base if base else float('nan'):>10.2f}{r.get('reduce_us', float('nan')):>11.0f}")
    fast = {wl: max((v for (fw, w), v in one.items() if w == wl and fw.startswith("symbp")), default=None)
            for wl in WORKLOADS}
    sizes = {r["workload"]: r["grad_bytes"] for r in rows if "grad_bytes" in r}
    print("\nOn paper (speed-up strong / weak scaling, see the docstring):")
    print("\n".join(paper({wl: 1 / v for wl, v in fast.items() if v}, sizes)))


if __name__ == "__main__":
    main()
