"""The compile cache: content addressing, concurrent builds, corrupt entries, info/clear."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import symbp as sb
from codegen.cython import build
from codegen.cython import cache as folder
from codegen.spec import Spec
from symbp import cli

pytest.importorskip("Cython")
SOURCE = "# cython: language_level=3\nVALUE = {value}\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_loaded", {})  # forget modules imported by other tests
    monkeypatch.setattr(folder, "_private", None)  # and any fallback folder
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
    from codegen.cython import cache as keys
    from codegen.cython import emitter

    def model():
        m = sb.Model("warm")
        x = m.input("x", (3,))
        m.minimize(sb.sum(sb.tanh(x @ m.param("W", (3, 2)))))
        return sb.derive(m)

    monkeypatch.setenv("SYMBP_CFLAGS", "-O0")
    first = sb.compile(model(), backend="cython", dtype="float64")
    spec = lambda d, **kw: __import__("codegen").Spec(d, sb.optim.SGD(**kw), "float64")
    assert keys.graph_key(spec(model())) == keys.graph_key(spec(model()))
    assert keys.graph_key(spec(model())) != keys.graph_key(spec(model(), clip_norm=1.0))

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
    from codegen.cython.cache import graph_key

    def spec(sign):
        m = sb.Model("keycell")
        s, y = m.input("s", (5, 3)), m.input("y", (), dtype="int64")
        Wx, Wh = m.param("Wx", (3, 4)), m.param("Wh", (4, 4))
        hT, _ = sb.scan(lambda h, x: (sb.tanh(x @ Wx + sign * (h @ Wh)), None), s, sb.zeros((4,)))
        m.minimize(sb.softmax_cross_entropy(hT @ m.param("V", (4, 3)), y))
        return Spec(sb.derive(m), sb.optim.SGD(lr=0.1), "float64")

    assert graph_key(spec(1.0)) == graph_key(spec(1.0))
    assert graph_key(spec(1.0)) != graph_key(spec(-1.0))


def tiny(name: str, width: int = 2) -> sb.Derivation:
    m = sb.Model(name)
    x = m.input("x", (3,))
    m.minimize(sb.sum(sb.tanh(x @ m.param("W", (3, width)))))
    return sb.derive(m)


def no_emit(spec):
    raise AssertionError("a warm start must not generate code")


X = {"x": [[0.1, 0.2, 0.3]]}


def test_an_entry_that_lost_its_source_is_rebuilt(cache, monkeypatch):
    """The warm start reads the entry's .pyx; without it every start failed (FileNotFoundError)."""
    from codegen.cython import emitter

    monkeypatch.setenv("SYMBP_CFLAGS", "-O0")
    first = sb.compile(tiny("lost"), backend="cython", dtype="float64")
    (pyx,) = cache.glob("symbp_lost_*/*.pyx")
    pyx.unlink()
    build._loaded.clear()
    second = sb.compile(tiny("lost"), backend="cython", dtype="float64")
    assert second.source == first.source and pyx.read_text() == first.source
    monkeypatch.setattr(emitter, "emit", no_emit)  # and the next start is warm again
    build._loaded.clear()
    assert sb.compile(tiny("lost"), backend="cython", dtype="float64").loss(**X) == first.loss(**X)


def test_an_index_file_that_is_not_text_is_ignored(cache, monkeypatch):
    monkeypatch.setenv("SYMBP_CFLAGS", "-O0")
    first = sb.compile(tiny("index"), backend="cython", dtype="float64")
    for f in (cache / "index").iterdir():
        f.write_bytes(b"\xff\xfe\x80 not UTF-8")
    build._loaded.clear()
    assert sb.compile(tiny("index"), backend="cython", dtype="float64").loss(**X) == first.loss(**X)


def _unwritable(how: str, cache: Path, monkeypatch) -> None:
    """Make the cache folder unwritable in one of the ways users meet (as root, chmod stops nothing)."""
    if how == "a file":
        cache.parent.mkdir(exist_ok=True)
        cache.write_text("not a folder")
    elif how == "read-only":
        cache.mkdir()

        def refuse(path, *args, **kw):  # what open() says in a folder without write permission
            if Path(path).is_relative_to(cache):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return open(path, *args, **kw)

        monkeypatch.setattr(build, "open", refuse, raising=False)
    else:
        write_text = pathlib.Path.write_text

        def full(self, *args, **kw):
            if self.is_relative_to(cache):
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return write_text(self, *args, **kw)

        monkeypatch.setattr(pathlib.Path, "write_text", full)


@pytest.mark.parametrize("how", ["a file", "read-only", "full"])
def test_an_unwritable_cache_falls_back_to_a_private_folder_with_one_warning(cache, monkeypatch, how):
    _unwritable(how, cache, monkeypatch)
    monkeypatch.setenv("SYMBP_CFLAGS", "-O0")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first = build.build(SOURCE.format(value=21), "fallback", ("-O0",))
        second = build.build(SOURCE.format(value=22), "fallback", ("-O0",))
        tr = sb.compile(tiny("fallback"), backend="cython", dtype="float64")
    assert (first.VALUE, second.VALUE) == (21, 22) and np.isfinite(tr.loss(**X))
    (warning,) = [w for w in seen if issubclass(w.category, RuntimeWarning)]
    assert str(cache) in str(warning.message) and "SYMBP_CACHE_DIR" in str(warning.message)
    assert Path(first.__file__).is_relative_to(folder._private)
    assert how != "a file" or cache.read_text() == "not a folder"


def test_a_cache_that_cannot_be_written_anywhere_names_the_path(cache, monkeypatch):
    def full(self, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.warns(RuntimeWarning), pytest.raises(build.BuildError) as e:
        build.build(SOURCE.format(value=23), "nowhere", ("-O0",))
    assert f"cannot write the compiled-module cache {cache} ([Errno 28] No space left" in str(e.value)
    assert "Set SYMBP_CACHE_DIR to a writable folder" in str(e.value)


def test_a_build_killed_midway_is_shown_and_cleaned_up(cache, capsys):
    """SIGKILL during a build leaves its temporary folder: ``cache info`` shows it, the next
    build removes it; a build still running keeps its own."""
    script = textwrap.dedent(f"""
        import time
        from codegen.cython import build

        def hang(pyx, c_file):
            print("building", flush=True)
            time.sleep(600)

        build._cythonize = hang
        build.build({SOURCE.format(value=24)!r}, "killed", ("-O0",))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "building"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    running = cache / f".symbp_running_0123456789abcdef.{folder.HOST}-{os.getppid()}.abcd1234"
    running.mkdir()
    (killed,) = [t for t in build.cache_info()["temporary"] if t["stale"]]
    assert killed["name"].startswith(".symbp_killed_") and f"-{proc.pid}." in killed["name"]
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"{killed['name']}" in out and "left by a killed build" in out and "1 temporary build folder(s)" not in out
    assert "2 temporary build folder(s)" in out and "a build in progress" in out
    assert build.build(SOURCE.format(value=25), "next", ("-O0",)).VALUE == 25
    assert [t["name"] for t in build.cache_info()["temporary"]] == [running.name]
    build.cache_clear()
    assert running.is_dir()  # a build in progress keeps its folder


def test_a_sanitized_start_never_takes_a_plain_entry(cache, monkeypatch):
    """The sanitizer's flags are part of every key: build, remember and lookup alike, so a
    plain module recorded for a graph is not what a sanitized start finds (nor the reverse)."""
    plain = build.build(SOURCE.format(value=3), "keyed", ("-O0",))
    build.remember("graph-key", plain, ("-O0",))
    assert build.lookup("graph-key", ("-O0",))[0] is plain
    monkeypatch.setenv("SYMBP_SANITIZE", "1")
    monkeypatch.setenv("LD_PRELOAD", "/fake/libasan.so")  # only read to decide; nothing is built here
    assert build.lookup("graph-key", ("-O0",)) is None
    assert build.cache_key("x", build._flags(("-O0",))) != build.cache_key("x", ("-O0",))


def test_a_warm_cython_process_writes_what_a_fresh_one_writes(tmp_path, monkeypatch):
    """build.prestart starts Cython early (it warms up on a one-line file while the model is
    derived); the next build hands it its .pyx, and the C is the same as a fresh Cython's."""
    import codegen

    source = codegen.emit(Spec(sb.derive(_tiny()), sb.optim.SGD(), "float32"), "cython")
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for d in ("fresh", "warm"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "m.pyx").write_text(source)
    build._cythonize(tmp_path / "fresh" / "m.pyx", tmp_path / "fresh" / "m.c")
    build.prestart()
    assert len(build._warm) == 1
    with monkeypatch.context() as m:  # no fresh Cython now: the warm process must write the C
        m.setattr(build.subprocess, "run", lambda *a, **k: pytest.fail(f"a fresh process ran: {a}"))
        build._cythonize(tmp_path / "warm" / "m.pyx", tmp_path / "warm" / "m.c")
    assert build._warm == []
    fresh, warm = ((tmp_path / d / "m.c").read_text().replace(str(tmp_path / d), "DIR") for d in ("fresh", "warm"))
    assert warm == fresh


def test_a_warm_cython_process_fails_as_a_fresh_one_does_and_ends_when_unused(tmp_path, monkeypatch):
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    build.prestart()
    assert build._warm == []  # one core: Cython and the caller would only take turns
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: {0, 1})
    (tmp_path / "bad.pyx").write_text("def f(:\n    pass\n")
    build.prestart()
    with pytest.raises(build.BuildError, match="Cython failed on the generated module bad.pyx"):
        build._cythonize(tmp_path / "bad.pyx", tmp_path / "bad.c")
    assert build._warm == []
    # a compile that fails before building (here: emitting) ends the process it started
    import codegen

    def broken(spec, backend):
        (proc,) = build._warm
        seen.append(proc)
        raise RuntimeError("emit failed")

    seen: list = []
    monkeypatch.setenv("SYMBP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(codegen, "emit", broken)
    with pytest.raises(RuntimeError, match="emit failed"):
        sb.compile(sb.derive(_tiny()), backend="cython")
    assert build._warm == [] and seen[0].poll() is not None


def _tiny():
    m = sb.Model("warm")
    x, y = m.input("x", (3,)), m.input("y", (), dtype="int64")
    m.minimize(sb.softmax_cross_entropy(x @ m.param("W", (3, 2)), y))
    return m
