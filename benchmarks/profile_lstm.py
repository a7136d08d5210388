"""Run a recurrent workload's training step in a loop, for a sampling profiler (``perf``).

The per-op profile in README.md comes from::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/profile_lstm.py --workload lstm \\
        --steps 400 --perf /tmp/lstm.perf
    python benchmarks/perf_table.py /tmp/lstm.perf $SYMBP_CACHE_DIR/symbp_lstm_<key>/*.pyx

``--perf`` attaches ``perf record`` (with DWARF call graphs) to this process for the timed steps
only, so neither SymPy's derivation nor the compile lands in the profile.

The generated C runs each time step of each loop in its own function (``sb_<fn>_<tag>``,
see ``codegen.cython.loops._outline``): the ``.pyx`` in the cache entry says which is which.
``SYMBP_HOIST=0`` profiles the loop as written (``symbp.ops.hoist``). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="lstm")
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--perf", help="write a perf profile of the timed steps to this file")
    a = ap.parse_args()
    os.sched_setaffinity(0, {0})
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    from workloads import LR, WORKLOADS

    import symbp as sb

    wl = WORKLOADS[a.workload]
    P, D = wl.problem()
    d = sb.derive(wl.model())
    tr = sb.compile(d, backend=a.backend, dtype="float32", optimizer=sb.optim.SGD(lr=LR), params=P)
    for _ in range(20):
        tr.step(**D)
    rec = None
    if a.perf:
        rec = subprocess.Popen(["perf", "record", "-q", "-F", "700", "--call-graph", "dwarf,16384", "-o", a.perf,
                                "-p", str(os.getpid())])
        time.sleep(1.0)  # perf is attached
    s = time.perf_counter()
    for _ in range(a.steps):
        tr.step(**D)
    if rec is not None:
        rec.send_signal(signal.SIGINT)
        rec.wait()
    print(f"{a.workload} {a.backend}: {(time.perf_counter() - s) / a.steps * 1e6:.0f} us/step over {a.steps} steps")


if __name__ == "__main__":
    main()
