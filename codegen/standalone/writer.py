"""Standalone training packages: a folder that pip installs and that never imports symbp.

``write(spec, folder, ...)`` lays out::

    folder/
      pyproject.toml            builds and installs the package (setuptools)
      README.md                 how to install, self-test, train; its commands run verbatim
      src/<name>/__init__.py    trainer(): the Trainer with the initial (or given) weights
      src/<name>/__main__.py    python -m <name> --selftest | train data.npz ...
                                (both copied from files/, where ruff lints them)
      src/<name>/trainer.py     copies of the modules of codegen/runtime (trainer.py,
      src/<name>/training.py      training.py, plots.py, workspace.py, ...): they import only NumPy
      src/<name>/weights.npz    the initial weights
      src/<name>/_build.py      the seed it was built with, the self-test's int ranges (``draws``)
      ...                       the backend's own files (see PACKAGERS)

The package sits under ``src/`` so that ``python -m <name>`` run in the folder itself (the
README's next command after ``pip install .``) imports the installed package, with its
compiled kernels, rather than the uninstalled sources the current directory would shadow it with.

Each backend supplies its files through a *packager* in ``PACKAGERS``: a function of the
spec returning a ``BackendFiles``. Whatever it supplies, the package imports two kernel
modules by name: ``_kernels`` (the compiled dtype) and ``_kernels64`` (float64, the
self-test's oracle for finite differences). A Cython packager ships ``.pyx`` sources with a
``setup.py`` declaring the extensions (their sources under ``src/``); pip then compiles them
when the folder is installed, in an isolated environment holding only ``build_requires``.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys
from collections.abc import Callable

import numpy as np

import symbp
from codegen.spec import BackendFiles, Spec
from codegen.standalone import draws
from symbp.ir import SymbpError, check_identifier

FILES = pathlib.Path(__file__).parent / "files"
RUNTIME = pathlib.Path(__file__).parent.parent / "runtime"
SRC = "src"


def runtime_modules() -> list[pathlib.Path]:
    """The runtime's modules that every package carries (all of codegen/runtime but __init__)."""
    return sorted(p for p in RUNTIME.glob("*.py") if p.name != "__init__.py")
"""The folder holding the package inside the project (the "src layout"; see the module docstring)."""


def _numpy_files(spec: Spec, name: str) -> BackendFiles:
    from codegen.numpy import package

    return package.files(spec, name)


def _cython_files(spec: Spec, name: str) -> BackendFiles:
    from codegen.cython import package

    return package.files(spec, name)


# backend name -> packager (``codegen.<backend>.package.files``, imported when used).
PACKAGERS: dict[str, Callable[[Spec, str], BackendFiles]] = {"numpy": _numpy_files, "cython": _cython_files}


def write(spec: Spec, folder, backend: str, values: dict, name: str | None = None, seed: int = 0) -> pathlib.Path:
    """Write a standalone package for ``spec`` into ``folder``.

    Args:
        spec: derivation, optimiser and dtype.
        folder: created if missing; files symbp writes there are overwritten.
        backend: a key of ``PACKAGERS``.
        values: initial parameter values by name.
        name: the Python package name (default: the model's name).
        seed: keys the step's random numbers (dropout) in the package's trainer, as in ``sb.compile``'s.
    Returns:
        The folder, ready for ``pip install FOLDER``.
    """
    name = check_package_name(name or spec.derivation.name, given=name is not None)
    if backend not in PACKAGERS:
        raise SymbpError(f"sb.build: no standalone packaging for backend {backend!r} yet; "
                         f"choose from {', '.join(PACKAGERS)}")
    out = pathlib.Path(folder)
    pkg = out / SRC / name
    pkg.mkdir(parents=True, exist_ok=True)
    files = PACKAGERS[backend](spec, name)
    subs = _substitutions(spec, name, backend, files)
    texts = {
        "pyproject.toml": _template("pyproject.toml.in", subs),
        "README.md": _template("README.md.in", subs),
        f"{SRC}/{name}/__init__.py": (FILES / "package_init.py").read_text(),
        f"{SRC}/{name}/__main__.py": (FILES / "package_main.py").read_text(),
        f"{SRC}/{name}/_build.py": draws.module(spec.derivation, seed),
        **{f"{SRC}/{name}/{p.name}": p.read_text() for p in runtime_modules()},
        **{f"{SRC}/{name}/{k}": v for k, v in files.files.items()},
    }
    if files.setup_py is not None:
        texts["setup.py"] = files.setup_py
    for rel, text in texts.items():
        (out / rel).write_text(text)
    dtype = np.dtype(spec.dtype)
    np.savez(pkg / "weights.npz", **{k: np.asarray(v, dtype=dtype) for k, v in values.items()})
    return out


MAX_NAME = 100
"""Longest package name: it names a folder, and pip's wheel and dist-info names add ~40
characters to it within the file system's 255."""

RUNTIME_MODULES = ("symbp", "codegen", "numpy", "scipy", "sympy", "networkx", "Cython", "setuptools", "pip",
                   "tqdm", "matplotlib")
"""What a package or its build imports: a package of the same name would be imported instead."""


def check_package_name(name: str, given: bool = True) -> str:
    """Return ``name`` if it can name an installed package without hiding another module.

    Args:
        name: the import name asked for.
        given: whether the user passed it (``name=``) rather than it being the model's name.
    Returns:
        ``name``.
    Raises:
        SymbpError: not an identifier, too long, or the name of a standard-library module,
            of one symbp or the package needs, or of another installed module.
    """
    hint = "choose another with name=..." if given else "pass sb.build(..., name=...) to choose another"
    check_identifier(name, "package")
    if len(name) > MAX_NAME:
        raise SymbpError(f"package name {name[:20]!r}... is {len(name)} characters long; "
                         f"file names allow at most {MAX_NAME}: {hint}")
    if name in sys.stdlib_module_names or name.lower() in {m.lower() for m in RUNTIME_MODULES}:
        whose = "the standard library's" if name in sys.stdlib_module_names else "a required"
        raise SymbpError(f"package name {name!r} is also {whose} module {name!r}, and one would hide the "
                         f"other: {hint}")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    # A folder on the path without __init__.py (e.g. the output folder itself) is a namespace
    # spec with no origin file, and a package symbp built before may be rebuilt: neither hides anything.
    if found is not None and found.origin and pathlib.Path(found.origin).is_file():
        folder = pathlib.Path(found.origin).parent
        if not ((folder / "trainer.py").is_file() and (folder / "training.py").is_file()):
            raise SymbpError(f"package name {name!r} would hide the installed module {name!r} "
                             f"({found.origin}): {hint}")
    return name


def _substitutions(spec: Spec, name: str, backend: str, files: BackendFiles) -> dict[str, str]:
    d = spec.derivation
    deps = ["numpy>=1.22", *files.dependencies]
    build = ["setuptools>=61", *files.build_requires]
    inputs = ", ".join(f"{k} {_shape(n.shape)}{' int64' if n.dtype == 'int64' else ''}" for k, n in d.inputs.items())
    return {
        "NAME": name,
        "MODEL": d.name,
        "BACKEND": backend,
        "NEEDS": " and ".join(["NumPy", *map(_project, files.dependencies)])
        + (" at run time, and a C compiler to install (pip fetches " + ", ".join(map(_project, files.build_requires))
           + " to build it)" if files.build_requires else ""),
        "DTYPE": spec.dtype,
        "OPTIMIZER": repr(spec.optimizer),
        "VERSION": symbp.__version__,
        "INPUTS": inputs,
        "PARAMS": ", ".join(f"{k} {_shape(p.shape)}" for k, p in d.params.items()),
        "OUTPUTS": ", ".join(d.outputs) or "(none)",
        "DEPENDENCIES": json.dumps(deps),
        "BUILD_REQUIRES": json.dumps(build),
        "PACKAGE_DATA": json.dumps(["weights.npz", *files.package_data]),
        "INPUT_NAMES": ", ".join(d.inputs),
        "FIRST_PARAM": next(iter(d.params), ""),
    }


def _project(requirement: str) -> str:
    """The project name of a requirement such as ``scipy>=1.9``."""
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def _shape(shape) -> str:
    return "(" + ", ".join("batch" if s is None else str(s) for s in shape) + ")"


def _template(fname: str, subs: dict[str, str]) -> str:
    """Fill ``@KEY@`` markers (chosen so that braces in TOML and Markdown need no escaping)."""
    text = (FILES / fname).read_text()
    for k, v in subs.items():
        text = text.replace(f"@{k}@", v)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise AssertionError(f"{fname}: unfilled template marker(s) {left}")
    return text
