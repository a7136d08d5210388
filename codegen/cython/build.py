"""Compile generated ``.pyx`` sources into extension modules, with a persistent cache.

An entry's key hashes everything the binary depends on: the source, the compiler (its
``--version``) and flags, Cython's version, the Python ABI and, for ``-march=native``
builds, the CPU's feature flags. Entries live in ``$SYMBP_CACHE_DIR``, else
``$XDG_CACHE_HOME/symbp``, else ``~/.cache/symbp`` (see ``codegen.cython.cache``). A build
happens in a temporary directory beside the cache and is renamed into place, under a per-key
file lock, so two processes building the same model both succeed and neither sees half an
entry. Every entry carries a manifest with the SHA-256 of its binary; an entry that fails
that check, or has lost its source, is rebuilt. A cache that cannot be written (read-only,
full, or a file) sends builds to a private temporary folder, with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import types
from pathlib import Path

from codegen.cython import cache, sanitize
from codegen.cython.cache import cache_clear, cache_dir, cache_info  # noqa: F401 - build's public names
from codegen.cython.module import kernels_of, load_extension
from symbp.ir import SymbpError, sanitise

FORMAT = 1  # bump when the layout of an entry changes
DEFAULT_FLAGS = ("-O3", "-march=native")
PORTABLE_FLAGS = ("-O3",)
KERNEL_FLAGS = ("-fno-math-errno",)
"""Always on for the kernels: lets gcc vectorise math calls; NaN and Inf behave as without it."""
GLUE_FLAGS = ("-O0",)
"""Cython's glue around the kernels: only Python-call plumbing, so not worth gcc's time."""
STEM = 48
"""Characters of the model's name kept in a cache entry's name."""
_loaded: dict[str, types.ModuleType] = {}


class BuildError(SymbpError):
    """The C compiler or Cython failed, or is missing."""


def compile_flags() -> tuple[str, ...]:
    """Optimisation flags: ``$SYMBP_CFLAGS`` if set (e.g. "-O1" for quick test builds), else
    ``-O3 -march=native``, or ``-O3`` alone when ``$SYMBP_PORTABLE`` is set."""
    env = os.environ.get("SYMBP_CFLAGS")
    if env is not None:
        return tuple(env.split())
    return PORTABLE_FLAGS if os.environ.get("SYMBP_PORTABLE") else DEFAULT_FLAGS


def _flags(flags) -> tuple[str, ...]:
    """The optimisation flags a build uses: ``flags`` (default :func:`compile_flags`) and the
    sanitizers' when on (so they are part of every cache key)."""
    return (*(compile_flags() if flags is None else tuple(flags)), *sanitize.flags())


@functools.cache
def compiler() -> tuple[str, str]:
    """(path, version line) of the C compiler: ``$CC``, else Python's, else cc/gcc/clang."""
    names = [os.environ.get("CC", ""), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc", "clang"]
    for name in filter(None, names):
        path = shutil.which(name)
        if path:
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            return path, (out.splitlines() or ["unknown"])[0]
    raise BuildError("the Cython backend needs a C compiler, and none was found (tried $CC, cc, gcc, clang). "
                     "Install one (e.g. `apt install gcc`, Xcode command line tools), or use backend=\"numpy\".")


@functools.cache
def openmp() -> tuple[str, ...]:
    """("-fopenmp",) when the compiler builds and links OpenMP code, else () (the pragmas are then
    ignored). ``$SYMBP_OPENMP=0`` turns it off; ``$OMP_NUM_THREADS`` sets the threads at run time."""
    if os.environ.get("SYMBP_OPENMP", "1") == "0":
        return ()
    return _openmp_probe()


@functools.cache
def _openmp_probe() -> tuple[str, ...]:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "probe.c"
        src.write_text("#include <omp.h>\nint f(void) { return omp_get_max_threads(); }\n")
        link = ["-bundle", "-undefined", "dynamic_lookup"] if sys.platform == "darwin" else ["-shared"]
        cmd = [compiler()[0], "-fopenmp", "-fPIC", *link, str(src), "-o", str(Path(d) / "probe.so")]
        try:
            ok = subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    return ("-fopenmp",) if ok else ()


@functools.cache
def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() + " " + platform.processor()


@functools.cache
def _cython_version() -> str:
    # Cython's own __version__, not importlib.metadata's (~50 ms to import, a sixth of a warm
    # start): SciPy's package, which the modules' BLAS comes from, imports Cython's Shadow anyway.
    try:
        import Cython
        return Cython.__version__
    except Exception:  # noqa: BLE001 - not installed: reported when we try to build
        return "missing"


def cache_key(source: str, flags: tuple[str, ...]) -> str:
    """The content address of a build of ``source`` with ``flags`` on this machine."""
    parts = [str(FORMAT), source, compiler()[1], " ".join(flags), " ".join(KERNEL_FLAGS + GLUE_FLAGS),
             os.environ.get("SYMBP_OPENMP", "1"),
             _cython_version(), sys.implementation.cache_tag, sysconfig.get_config_var("EXT_SUFFIX") or "",
             _cpu_features() if any(f.startswith("-march=native") for f in flags) else platform.machine()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock on ``path`` (advisory; a no-op where fcntl is missing)."""
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows: builds are still atomic, only not serialised
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(source: str, name: str, flags: tuple[str, ...] | None = None) -> types.ModuleType:
    """Build (or fetch from the cache) and import the extension for ``source``.

    Args:
        source: the ``.pyx`` text.
        name: a readable stem for the module name (the key is appended).
        flags: optimisation flags (default: :func:`compile_flags`); the sanitizers' are added
            when ``$SYMBP_SANITIZE`` is set.
    Returns:
        The imported module.
    """
    flags = _flags(flags)
    key = cache_key(source, flags)
    # the key makes it unique; the stem is only for people, and must leave the file name
    # (stem, key, ABI suffix; a build folder's prefix) well inside the file system's 255 bytes
    modname = f"symbp_{sanitise(name)[:STEM]}_{key[:16]}"
    if modname in _loaded:
        return _loaded[modname]
    # a read-only cache still serves the entries it has; only a build writes
    entry = next((r / modname for r in cache.roots() if cache.valid(r / modname)), None)
    if entry is None:
        entry = _build_somewhere(source, modname, flags, key) / modname
    module = load_extension(modname, entry / json.loads((entry / "manifest.json").read_text())["binary"])
    _loaded[modname] = module
    return module


def _build_somewhere(source: str, modname: str, flags, key: str) -> Path:
    """Build entry ``modname`` in the cache, or in a private temporary one when the cache
    cannot be written (read-only, full, or not a folder); returns the folder used."""
    root = cache.write_root()
    try:
        _build_locked(source, modname, flags, key, root)
        return root
    except OSError as e:
        if root != cache.cache_dir():  # already the private folder
            raise _unwritable(e) from None
        first = e
    try:
        root = cache.private_cache(first)
        _build_locked(source, modname, flags, key, root)
    except OSError as e:
        raise _unwritable(first, e) from None
    return root


def _unwritable(err: OSError, again: OSError | None = None) -> BuildError:
    also = f"; a private temporary folder failed too ({again})" if again is not None else ""
    return BuildError(f"cannot write the compiled-module cache {cache.cache_dir()} ({err}){also}. Set SYMBP_CACHE_DIR "
                      "to a writable folder with free space.")


def _build_locked(source: str, modname: str, flags, key: str, root: Path) -> None:
    """Build entry ``modname`` in ``root`` unless another process did meanwhile (per-entry lock)."""
    root.mkdir(parents=True, exist_ok=True)
    entry = root / modname
    with _lock(root / f"{modname}.lock"):
        if cache.valid(entry) is not None:  # another process built it meanwhile
            return
        cache.remove_stale(root)  # what killed builds left behind
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)  # corrupt or partial: rebuild
        _build_entry(source, modname, flags, key, root, entry)
        if cache.valid(entry) is None:
            raise BuildError(f"cache entry {entry} is not valid right after building it")


def lookup(graph_key: str, flags: tuple[str, ...] | None = None) -> tuple[types.ModuleType, str] | None:
    """The module and source cached for a graph key (see ``codegen.cython.cache.graph_key``), or None.

    This is the warm path: no code generation, only hashing and an import.
    """
    flags = _flags(flags)
    name = cache_key(graph_key, flags)
    for root in cache.roots():
        try:
            modname = (root / "index" / name).read_text().strip()
            entry = root / modname
            manifest = cache.valid(entry) if modname.isidentifier() else None
            if manifest is None:
                continue
            source = (entry / f"{modname}.pyx").read_text()
        except (OSError, ValueError):  # unreadable, not UTF-8, or gone meanwhile: the cold path rebuilds
            continue
        module = _loaded.get(modname) or load_extension(modname, entry / manifest["binary"])
        _loaded[modname] = module
        return module, source
    return None


def remember(graph_key: str, module: types.ModuleType, flags: tuple[str, ...] | None = None) -> None:
    """Record which entry a graph key built, for :func:`lookup` (written atomically)."""
    flags = _flags(flags)
    root = next((r for r in cache.roots() if cache.valid(r / module.__name__)), cache.write_root())
    index = root / "index"
    tmp = index / f".{os.getpid()}.{threading.get_ident()}.tmp"  # two threads may remember at once
    try:
        index.mkdir(parents=True, exist_ok=True)
        tmp.write_text(module.__name__)
        os.replace(tmp, index / cache_key(graph_key, flags))
    except OSError:
        pass  # a read-only or full cache: the next start takes the cold path, which still works


def _build_entry(source: str, modname: str, flags, key: str, root: Path, entry: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=cache.temp_prefix(modname), dir=root))
    try:
        t0 = time.perf_counter()
        pyx = tmp / f"{modname}.pyx"
        pyx.write_text(source)
        kernels = kernels_of(source)
        objects, jobs = [], []
        mvec = kernels is not None and sys.platform.startswith("linux") and platform.machine() == "x86_64"
        if kernels is not None:
            # The kernels compile with the real flags while Cython runs: two processes at once.
            (tmp / "kernels.c").write_text(kernels)
            jobs.append(_cc_start(tmp / "kernels.c", tmp / "kernels.o",
                                  (*flags, *KERNEL_FLAGS, *openmp(), *(["-DSB_MVEC"] if mvec else []))))
            objects.append(tmp / "kernels.o")
        c_file = tmp / f"{modname}.c"
        _cythonize(pyx, c_file)
        t1 = time.perf_counter()
        glue_flags = (*GLUE_FLAGS, "-DSB_GLUE_ONLY") if kernels is not None else tuple(flags)
        sanitizers = tuple(f for f in flags if f in sanitize.FLAGS)  # the link needs them too
        jobs.append(_cc_start(c_file, tmp / f"{modname}.o", glue_flags))
        objects.append(tmp / f"{modname}.o")
        for job in jobs:
            _cc_wait(job)
        binary = f"{modname}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
        try:
            _link(objects, tmp / binary, mvec=mvec, extra=(*openmp(), *sanitizers))
        except BuildError:
            if not mvec:
                raise
            # no libmvec to link: recompile the kernels with scalar math calls
            _cc_wait(_cc_start(tmp / "kernels.c", tmp / "kernels.o", (*flags, *KERNEL_FLAGS, *openmp())))
            _link(objects, tmp / binary, mvec=False, extra=(*openmp(), *sanitizers))
        t2 = time.perf_counter()
        for f in tmp.iterdir():
            if f.suffix in (".c", ".o"):
                f.unlink()
        manifest = {"key": key, "binary": binary, "sha256": cache.sha256(tmp / binary), "flags": list(flags),
                    "compiler": compiler()[1], "cython": _cython_version(), "python": sys.implementation.cache_tag,
                    "seconds": {"cython": round(t1 - t0, 3), "cc": round(t2 - t1, 3)}, "created": time.time()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, entry)  # atomic: readers see no entry or a whole one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_WARM = """\
import json, os, sys, tempfile
import Cython
from Cython.Compiler.Main import main
BASE = [os.path.dirname(os.path.dirname(os.path.realpath(Cython.__file__)))], sys.path[1:]
def run(pyx, out, cwd):  # as `python -m cython` in cwd would: it looks up cimported .pxd files along sys.path
    os.chdir(cwd)
    sys.path[:] = [*BASE[0], cwd, *BASE[1]]
    sys.argv = ["cython", "-3", "--fast-fail", pyx, "-o", out]
    try:
        main(command_line=1)
    except SystemExit as e:
        return e.code or 0
    return 0
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, "w.pyx"), "w").write("def f(x):\\n    return x\\n")
    run(os.path.join(d, "w.pyx"), os.path.join(d, "w.c"), d)
line = sys.stdin.readline()
sys.exit(run(*json.loads(line)) if line else 0)
"""
_warm: list = []  # at most one Cython process, started by prestart() and taken by the next build
_warm_lock = threading.Lock()


def prestart() -> None:
    """Start Cython for the next build while the caller derives and emits (call :func:`discard_warm`
    when no build follows). Its first file in a process costs ~0.4 s more than the next, so this
    process compiles a one-line file meanwhile, then the real ``.pyx`` from stdin: 0.16 s instead
    of 0.65 s for the MLP's, a cold MLP compile 1.15 s instead of 1.33 on two cores. Only where
    two cores may be used: on one, the two take turns and cost ~0.2 s more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores < 2 or importlib.util.find_spec("Cython") is None:
        return
    with _warm_lock:
        if not _warm:
            try:
                _warm.append(subprocess.Popen([sys.executable, "-c", _WARM], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              env=sanitize.tool_env()))
            except OSError:
                pass  # no process to spare: the build starts Cython itself


def discard_warm() -> None:
    """End a process :func:`prestart` started that no build took."""
    with _warm_lock:
        procs = _warm[:]
        _warm.clear()
    for proc in procs:
        proc.kill()
        proc.communicate()


def _cythonize(pyx: Path, c_file: Path) -> None:
    try:
        import Cython  # noqa: F401
    except ImportError:
        raise BuildError("the Cython backend needs Cython (`pip install cython`); or use backend=\"numpy\"") from None
    with _warm_lock:
        warm = _warm.pop() if _warm else None
    if warm is not None:
        try:
            warm.communicate(json.dumps([str(pyx), str(c_file), os.getcwd()]) + "\n")
        except BaseException:  # interrupted: it must not write into a folder being removed
            warm.kill(), warm.communicate()
            raise
        if warm.returncode == 0 and c_file.exists():
            return  # else it failed or was killed: a fresh Cython gives its own message
    cmd = [sys.executable, "-m", "cython", "-3", "--fast-fail", str(pyx), "-o", str(c_file)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=sanitize.tool_env())
    if res.returncode:
        raise BuildError(f"Cython failed on the generated module {pyx.name}:\n{res.stderr[-4000:]}")


def _cc_start(c_file: Path, obj: Path, flags) -> tuple:
    include = sysconfig.get_paths()["include"]
    cmd = [compiler()[0], *flags, "-fPIC", "-fwrapv", "-fno-strict-aliasing", "-w", f"-I{include}",
           "-c", str(c_file), "-o", str(obj)]
    return cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=sanitize.tool_env())


def _cc_wait(job) -> None:
    cmd, proc = job
    _, err = proc.communicate()
    if proc.returncode:
        raise BuildError(f"the C compiler failed on {Path(cmd[-3]).name} ({' '.join(cmd[:3])} ...):\n{err[-4000:]}")


def _link(objects, out: Path, mvec: bool, extra=()) -> None:
    link = ["-bundle", "-undefined", "dynamic_lookup"] if sys.platform == "darwin" else ["-shared"]
    cmd = [compiler()[0], *map(str, objects), "-o", str(out), *link, *(["-lmvec"] if mvec else []), *extra, "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=sanitize.tool_env())
    if res.returncode:
        raise BuildError(f"linking failed ({' '.join(cmd[:2])} ...):\n{res.stderr[-4000:]}")
