"""The import rules of the layout (docs/ARCHITECTURE.md), checked on the AST of every module.

- The core (everything in ``symbp`` but its face) never imports ``codegen``; the face
  (``symbp/__init__.py``, ``symbp/cli.py``) does, and only inside functions.
- Inside ``symbp``, a stage imports only its own and earlier stages (``SYMBP_STAGES``); the
  few lazy imports against that direction are listed in ``BACK_EDGES`` with their reason.
- Inside ``codegen``, the backends never import each other or the standalone writer; the
  runtime imports neither ``symbp`` nor the rest of ``codegen`` (it is copied into packages).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

SYMBP_STAGES = [
    ("core", ("symbp.ir", "symbp.registry", "symbp.notation")),
    ("ops", ("symbp.ops",)),
    ("model", ("symbp.model", "symbp.init", "symbp.optim", "symbp.layers")),
    ("autodiff", ("symbp.autodiff",)),
    ("show", ("symbp.show",)),
    ("face", ("symbp", "symbp.gradcheck", "symbp.cli")),
]
"""Stages in pipeline order; a module belongs to the stage of its longest listed prefix."""

CODEGEN_STAGES = [
    ("contract", ("codegen.spec", "codegen.naming")),
    ("backends", ("codegen.numpy", "codegen.cython", "codegen.runtime")),
    ("packaging", ("codegen.standalone",)),
    ("dispatch", ("codegen",)),
]

BACK_EDGES = {
    ("symbp.ir", "symbp.ops"): "operator sugar: x + y on a Node calls the op functions",
    ("symbp.ops.scan", "symbp.autodiff.derive"): "sb.scan derives its cell's backward (vjp) when it traces",
    ("symbp.autodiff.derive", "symbp.show.equations"): "Derivation.equations() is the derivation's own face",
    ("symbp.autodiff.derive", "symbp.show.pictures"): "Derivation.dot() and its Jupyter picture",
    ("symbp.autodiff.derive", "symbp.show.cost"): "Derivation.explain(): the cost of a step, before compiling",
}
"""Imports against the stage order: allowed only inside a function, and only these."""


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for top in ("symbp", "codegen"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            if "files" in rel.parts:  # standalone package templates: checked by test_runtime_is_self_contained
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(name: str, path: pathlib.Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, lazy) for every import in a module; lazy = inside a function.

    ``from a import b`` counts as importing ``a.b`` when that is a module of ours, else ``a``.
    """
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return [(m, line, lazy) for m, line, lazy in found if m.split(".")[0] in ("symbp", "codegen")]


def stage(module: str, stages) -> int:
    best, where = -1, None
    for k, (_, prefixes) in enumerate(stages):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, where = len(p), k
    assert where is not None, f"{module} belongs to no stage: add it to the stage list in {__file__}"
    return where


def violations() -> list[str]:
    out = []
    for name, path in MODULES.items():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for target, line, lazy in imports(name, path):
            at = f"{where}:{line}: {name} imports {target}"
            if name.startswith("symbp"):
                if target.startswith("codegen"):
                    if name not in ("symbp", "symbp.cli"):
                        out.append(f"{at}: the core never imports codegen")
                    elif not lazy:
                        out.append(f"{at}: the face imports codegen only inside functions")
                    continue
                mine, theirs = stage(name, SYMBP_STAGES), stage(target, SYMBP_STAGES)
                if theirs > mine:
                    edge = next((e for e in BACK_EDGES if name == e[0] and target.startswith(e[1])), None)
                    if edge is None:
                        out.append(f"{at}: stage {SYMBP_STAGES[mine][0]!r} may not import the later stage "
                                   f"{SYMBP_STAGES[theirs][0]!r}")
                    elif not lazy:
                        out.append(f"{at}: the back edge {edge} is allowed only inside a function")
            else:
                if target.startswith("symbp"):
                    if name.startswith("codegen.runtime"):
                        out.append(f"{at}: the runtime is copied into standalone packages; it imports only NumPy")
                    continue
                if name.startswith("codegen.runtime") and not target.startswith("codegen.runtime"):
                    out.append(f"{at}: the runtime imports nothing else of codegen (it is copied into packages)")
                mine, theirs = stage(name, CODEGEN_STAGES), stage(target, CODEGEN_STAGES)
                if theirs > mine and target != "codegen":
                    out.append(f"{at}: {CODEGEN_STAGES[mine][0]!r} may not import the later "
                               f"{CODEGEN_STAGES[theirs][0]!r}")
                for a, b in (("codegen.numpy", "codegen.cython"), ("codegen.cython", "codegen.numpy")):
                    if name.startswith(a) and target.startswith(b):
                        out.append(f"{at}: a backend never imports another backend")
    return out


def test_import_rules_hold():
    assert violations() == []


def test_every_back_edge_is_still_used():
    """A listed exception that no code needs any more is removed from the list."""
    used = {(n, t) for n, p in MODULES.items() for t, _, lazy in imports(n, p)}
    stale = [e for e in BACK_EDGES if not any(n == e[0] and t.startswith(e[1]) for n, t in used)]
    assert stale == []


@pytest.mark.parametrize("module, source, expect", [
    ("symbp.autodiff.schedule", "import codegen\n", "the core never imports codegen"),
    ("symbp.ops.elementwise", "from codegen.cython import build\n", "the core never imports codegen"),
    ("symbp.ir", "def f():\n    from codegen import spec\n", "the core never imports codegen"),
    ("symbp", "import codegen\n", "only inside functions"),
    ("symbp.ops.nn", "from symbp.layers import Dense\n", "may not import the later stage 'model'"),
    ("symbp.ops.scan", "from symbp.autodiff.derive import vjp\n", "allowed only inside a function"),
    ("symbp.layers.dense", "def f():\n    from symbp.show import equations\n", "may not import the later stage"),
    ("codegen.numpy.emitter", "from codegen.cython import kernels\n", "never imports another backend"),
    ("codegen.cython.package", "from codegen.standalone import write\n", "may not import the later"),
    ("codegen.runtime.trainer", "import symbp\n", "imports only NumPy"),
])
def test_the_rule_fails_on_a_forbidden_import(module, source, expect, tmp_path, monkeypatch):
    """Each rule, seen failing: a module given one forbidden import."""
    bad = tmp_path / MODULES[module].name  # __init__.py stays a package's own module
    bad.write_text(MODULES[module].read_text() + "\n" + source)
    monkeypatch.setitem(MODULES, module, bad)
    found = violations()
    assert any(expect in v and module in v for v in found), found


def test_runtime_is_self_contained():
    """The files copied into standalone packages import only NumPy, the standard library, the
    optional tqdm/matplotlib/mpi4py, and each other (relatively)."""
    allowed = {"numpy", "tqdm", "matplotlib", "mpi4py", "__future__"}
    runtime, files = ROOT / "codegen" / "runtime", ROOT / "codegen" / "standalone" / "files"
    copied = [*runtime.glob("[!_]*.py"), *files.glob("*.py")]
    assert len(copied) >= 4  # trainer, training, ... and the two package templates
    for path in copied:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                assert top in allowed or top in __import__("sys").stdlib_module_names, \
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"


def test_folders_stay_small():
    """No folder with more than 12 modules (besides its __init__) directly in it; no module over 400 lines."""
    for top in ("symbp", "codegen"):
        for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= 12, f"{folder.relative_to(ROOT)} holds more than 12 modules"
    for path in MODULES.values():
        assert len(path.read_text().splitlines()) <= 400, f"{path.relative_to(ROOT)} is over 400 lines"


def test_every_package_says_what_it_is():
    """Each package's __init__ opens with a docstring naming its stage and what it may import."""
    for path in MODULES.values():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "import" in doc, f"{path.relative_to(ROOT)}: the docstring says what the package may import"
