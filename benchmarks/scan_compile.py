"""Cold derive + emit + compile time of the RNN/LSTM workloads on the Cython backend at several
sequence lengths (each with an empty cache): it must not grow with T. Not a test.

    python benchmarks/scan_compile.py --lengths 32,4096
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(workload: str, T: int) -> tuple[float, int]:
    """(seconds for model + derive + compile, lines of generated source), in this process."""
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import workloads

    import symbp as sb

    workloads.T = T  # the models read the sequence length when they are built
    t0 = time.perf_counter()
    tr = sb.compile(sb.derive(workloads.WORKLOADS[workload].model()), backend="cython", dtype="float32",
                    optimizer=sb.optim.SGD(lr=0.01))
    return time.perf_counter() - t0, tr.source.count("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="32,4096")
    ap.add_argument("--workloads", default="rnn,lstm")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        secs, lines = one(a.one[0], int(a.one[1]))
        print(f"RESULT {secs:.2f} {lines}")
        return
    print("| workload | T | cold derive + compile s | source lines |\n|---|---|---|---|")
    for wl in a.workloads.split(","):
        for T in map(int, a.lengths.split(",")):
            cache = tempfile.mkdtemp(prefix="symbp-compile-")
            try:
                env = {**os.environ, "SYMBP_CACHE_DIR": cache}
                env.pop("SYMBP_CFLAGS", None)
                out = subprocess.run([sys.executable, __file__, "--one", wl, str(T)], env=env, capture_output=True,
                                     text=True, check=True).stdout
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            secs, lines = out.split("RESULT ")[1].split()
            print(f"| {wl} | {T} | {secs} | {lines} |", flush=True)


if __name__ == "__main__":
    main()
