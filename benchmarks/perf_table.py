"""Group a ``perf record --call-graph dwarf`` profile of a symbp step by where the time goes.

Each sample is charged to the nearest generated function on its stack: a time step of a loop
(``sb_<fn>_k<N>``, see ``codegen.cython.loops._outline``; forward or reverse, read from the
``.pyx``) or the rest of the step (``sb_<fn>``), and within it to the products (``sb_mm``,
BLAS) or to everything else (elementwise kernels, libm/libmvec, copies). Samples with no
generated function on the stack are the Python side (wrapper, runtime, garbage collector).

    perf record -D 6000 -F 700 --call-graph dwarf,16384 -o /tmp/lstm.perf \\
        python benchmarks/profile_lstm.py --workload lstm_step
    python benchmarks/perf_table.py /tmp/lstm.perf $SYMBP_CACHE_DIR/symbp_lstm_step_*/*.pyx

Not part of the test suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

GEN = re.compile(r"^sb_(?!mm$|micro$|pack_t$|gemm$|sigmoid$|softplus$)[a-z]+(_k\d+)?$")


def loops(pyx: str) -> dict[str, str]:
    """Outlined step function name -> "forward step" or "reverse step", from its signature."""
    out = {}
    for m in re.finditer(r"static SB_NOINLINE void (sb_\w+)\(([^)]*)\)", open(pyx).read()):
        # the reverse step also gets its chunk's first step (truncation), the forward one does not
        out[m.group(1)] = "reverse step" if re.search(r"long \w+lo\b", m.group(2)) else "forward step"
    return out


def samples(perf_data: str):
    """Yield each sample's stack (leaf first) as symbol names."""
    text = subprocess.run(["perf", "script", "-i", perf_data, "-F", "ip,sym"], capture_output=True,
                          text=True).stdout
    for block in text.split("\n\n"):
        rows = [ln.split() for ln in block.strip().splitlines()]
        stack = [r[1].split(".")[0] for r in rows if len(r) >= 2]  # "addr symbol [(inlined)]"
        if stack:
            yield stack


def main() -> None:
    perf_data, pyx = sys.argv[1], sys.argv[2]
    kinds = loops(pyx)
    count: Counter = Counter()
    leaves: Counter = Counter()
    for stack in samples(perf_data):
        gen = next((s for s in stack if GEN.match(s)), None)
        if gen is None:
            count["Python side (wrapper, runtime, gc)"] += 1
            leaves[stack[0]] += 1
            continue
        where = kinds.get(gen, "outside the loops")
        above = stack[:stack.index(gen)]
        what = "products" if any(s.startswith(("sb_mm", "GOMP", "sgemm", "sb_gemm")) or "gemm" in s
                                 for s in [stack[0], *above]) else "elementwise, copies"
        count[f"{where}: {what}"] += 1
    total = sum(count.values())
    print(f"| part of the step | share ({total} samples) |\n|---|---|")
    for k, v in sorted(count.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {100 * v / total:.0f} % |")
    print("Python side, top leaves:", ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in leaves.most_common(6)))


if __name__ == "__main__":
    main()
