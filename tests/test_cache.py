"""The compile cache: content addressing, concurrent builds, corrupt entries, info/clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import symbp as sb
from codegen.cython import build
from codegen.spec import Spec

pytest.importorskip("Cython")
SOURCE = "# cython: language_level=3\nVALUE = {value}\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_loaded", {})  # forget modules imported by other tests
    return tmp_path / "cache"


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def test_two_processes_building_at_once_both_succeed(cache):
    script = ("import sys; from codegen.cython import build; "
              f"m = build.build({SOURCE.format(value=7)!r}, 'race', ('-O0',)); print(m.VALUE)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == "7"
    assert len(entries(cache)) == 1  # one entry, no temporary build directory left behind


def test_corrupt_or_partial_entry_is_rebuilt(cache):
    src = SOURCE.format(value=11)
    assert build.build(src, "corrupt", ("-O0",)).VALUE == 11
    (entry,) = entries(cache)
    manifest = json.loads((entry / "manifest.json").read_text())
    binary = entry / manifest["binary"]
    binary.unlink()  # a new file, not a write into the one this process has mapped
    binary.write_bytes(b"\0garbage")  # e.g. a disk filled up mid-copy
    build._loaded.clear()
    assert build.build(src, "corrupt", ("-O0",)).VALUE == 11
    assert build.cache_info()["entries"][0]["valid"]
    (entry / "manifest.json").unlink()  # a partial entry
    build._loaded.clear()
    assert build.build(src, "corrupt", ("-O0",)).VALUE == 11
    assert (entry / "manifest.json").exists()


def test_changed_flags_make_a_new_entry_and_info_clear_report_them(cache):
    src = SOURCE.format(value=3)
    assert build.cache_key(src, ("-O0",)) != build.cache_key(src, ("-O1",))
    assert build.cache_key(src, ("-O0",)) != build.cache_key(SOURCE.format(value=4), ("-O0",))
    build.build(src, "flags", ("-O0",))
    build.build(src, "flags", ("-O1",))
    info = build.cache_info()
    assert info["dir"] == str(cache) and len(info["entries"]) == 2 and info["bytes"] > 0
    assert build.cache_clear() == 2
    assert build.cache_info()["entries"] == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SYMBP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.cache_dir() == tmp_path / "symbp"
    monkeypatch.setenv("SYMBP_CACHE_DIR", str(tmp_path / "mine"))
    assert build.cache_dir() == tmp_path / "mine"


def test_missing_compiler_points_to_the_numpy_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    build.compiler.cache_clear()
    try:
        with pytest.raises(build.BuildError, match='backend="numpy"'):
            build.compiler()
    finally:
        build.compiler.cache_clear()


def test_warm_start_skips_code_generation(cache, monkeypatch):
    import symbp as sb
    from codegen.cython import emitter

    def model():
        m = sb.Model("warm")
        x = m.input("x", (3,))
        m.minimize(sb.sum(sb.tanh(x @ m.param("W", (3, 2)))))
        return sb.derive(m)

    monkeypatch.setenv("SYMBP_CFLAGS", "-O0")
    first = sb.compile(model(), backend="cython", dtype="float64")
    spec = lambda d, **kw: __import__("codegen").Spec(d, sb.optim.SGD(**kw), "float64")
    assert emitter.graph_key(spec(model())) == emitter.graph_key(spec(model()))
    assert emitter.graph_key(spec(model())) != emitter.graph_key(spec(model(), clip_norm=1.0))

    def no_emit(spec):
        raise AssertionError("a warm start must not generate code")

    monkeypatch.setattr(emitter, "emit", no_emit)
    build._loaded.clear()
    second = sb.compile(model(), backend="cython", dtype="float64")
    assert second.source == first.source
    x = {"x": [[0.1, 0.2, 0.3]]}
    assert second.loss(**x) == first.loss(**x)


def test_warm_start_key_sees_inside_a_recurrence():
    """Two models that differ only inside a scan's step must not share a cache entry."""
    from codegen.cython.emitter import graph_key

    def spec(sign):
        m = sb.Model("keycell")
        s, y = m.input("s", (5, 3)), m.input("y", (), dtype="int64")
        Wx, Wh = m.param("Wx", (3, 4)), m.param("Wh", (4, 4))
        hT, _ = sb.scan(lambda h, x: (sb.tanh(x @ Wx + sign * (h @ Wh)), None), s, sb.zeros((4,)))
        m.minimize(sb.softmax_cross_entropy(hT @ m.param("V", (4, 3)), y))
        return Spec(sb.derive(m), sb.optim.SGD(lr=0.1), "float64")

    assert graph_key(spec(1.0)) == graph_key(spec(1.0))
    assert graph_key(spec(1.0)) != graph_key(spec(-1.0))
