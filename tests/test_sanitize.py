"""The sanitizer build (``SYMBP_SANITIZE=1``, codegen.cython.sanitize): kernels built with ASan
and UBSan, run in a Python with the ASan runtime preloaded. A planted out-of-bounds write must
end the process with a report (so CI's sanitizer job can fail); a clean model runs as usual."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from symbp.ir import SymbpError

ROOT = Path(__file__).resolve().parent.parent


def libasan() -> str | None:
    cc = shutil.which("gcc")
    if cc is None:
        return None
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


SCRIPT = '''
import sys
import numpy as np
import symbp as sb
from codegen.cython import build

m = sb.Model("sanitized")
x, y = m.input("x", (8,)), m.input("y", (), dtype="int64")
m.minimize(sb.softmax_cross_entropy(sb.tanh(x @ m.param("W", (8, 32))) @ m.param("V", (32, 3)), y))
tr = sb.compile(sb.derive(m), backend="cython", dtype="float64", seed=0)
if sys.argv[1] == "plant":
    # one element past a heap buffer, inside the kernels (volatile: gcc keeps the dead store)
    head = "static int sb_loss(void **a, double *io, long B) {"
    plant = head + " { volatile double *p_ = malloc(16 * sizeof(double)); p_[16] = 1; free((void *)p_); }"
    tr.kernels = build.build(tr.source.replace(head, plant), "planted")
print("loss", tr.loss(x=np.ones((5, 8)), y=np.zeros(5, np.int64)))
'''


def run_sanitized(tmp_path, what: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYMBP_SANITIZE="1", SYMBP_CFLAGS="-O1", SYMBP_CACHE_DIR=str(tmp_path / "cache"),
               LD_PRELOAD=libasan(), PYTHONMALLOC="malloc", PYTHONPATH=str(ROOT),
               ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return subprocess.run([sys.executable, "-c", SCRIPT, what], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


@pytest.mark.skipif(libasan() is None, reason="needs gcc's libasan")
def test_sanitizer_build_reports_an_out_of_bounds_write(tmp_path):
    clean = run_sanitized(tmp_path, "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "loss" in clean.stdout and "Sanitizer" not in clean.stderr
    planted = run_sanitized(tmp_path, "plant")
    assert planted.returncode != 0
    # UBSan's object-size check or ASan's redzone, whichever sees it first, names the kernels' line
    report = planted.stderr
    assert "kernels.c:" in report and ("runtime error: store" in report or "heap-buffer-overflow" in report), \
        report[-3000:]


def test_sanitizer_without_its_runtime_says_how_to_run(monkeypatch):
    from codegen.cython import sanitize

    monkeypatch.setenv("SYMBP_SANITIZE", "1")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    if sys.platform.startswith("linux"):
        with pytest.raises(SymbpError, match="LD_PRELOAD=.*libasan"):
            sanitize.flags()
    monkeypatch.setenv("SYMBP_SANITIZE", "0")
    assert sanitize.flags() == ()
