"""The op registry: one declaration per op.

An op is either *elementwise* (a scalar SymPy formula; derivatives come from
``sympy.diff``) or *structural* (a shape rule and a vector-Jacobian rule written with
other ops). Leaves (inputs, parameters, constants) are declared here too so every node's
op has an entry. Backends keep their own tables keyed by these names; tests walk this
registry, so a new op is tested by being declared.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

OPS: dict[str, OpDef] = {}


@dataclass(frozen=True)
class OpDef:
    """What symbp knows about one op.

    Attributes:
        name: the registry key, also ``Node.op``.
        kind: "elementwise", "structural" or "leaf".
        formula: elementwise only: ``formula(*scalar_args, **attrs) -> sympy.Expr``.
        shape: structural only: ``shape(inputs, **attrs) -> (shape, dtype)``; raises
            SymbpError with the user's names when the inputs do not fit.
        vjp: structural only: ``vjp(node, g) -> one cotangent Node (or None) per input``,
            built from other ops. None for ops that are not differentiable.
        show: how the op reads in an equation: ``show(args, node) -> sympy expression``
            where ``args`` are the display forms of the inputs (see symbp.show.equations).
        sample: for tests: keyword arguments that make a typical instance
            (``{"attrs": ..., "shapes": ...}``), so the registry-wide checks can build it.
        inference: the node's form in inference mode (``predict``, ``evaluate``), built from
            other nodes: ``inference(node) -> Node`` (dropout: its input unchanged). None: the
            op computes the same in both modes (see symbp.autodiff.modes).
    """

    name: str
    kind: str
    formula: Callable | None = None
    shape: Callable | None = None
    vjp: Callable | None = None
    show: Callable | None = None
    sample: dict = field(default_factory=dict)
    inference: Callable | None = None


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name!r} is registered twice")
    OPS[opdef.name] = opdef
    return opdef


def opdef(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        from symbp.ir import SymbpError

        raise SymbpError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


class LazyModule:
    """A module imported when one of its attributes is first read.

    Ops declare SymPy formulas and equation readings, but building a model only records which
    op applies to which tensors; SymPy (~0.3 s to import) loads when a formula is first read
    (derivation, equations, code generation), so ``import symbp`` and a start from the
    compiled-module cache never pay for it. Not put in ``sys.modules``: that would tell
    everyone the module is loaded when it is not.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._name)
        return getattr(module, attr)
