"""Elementwise ops: a scalar SymPy formula each, derivatives by ``sympy.diff``.

Every elementwise node stores its formula as ``attrs["expr"]``, a SymPy expression in the
symbols x0, x1, ... (one per input node; Python numbers are folded in as constants). That
single representation serves every pass: the backward rule is ``g * d expr / d x_i``, fusion
substitutes one formula into another, and each backend prints the formula.
"""

from __future__ import annotations

import math
from numbers import Number

import numpy as np

from symbp.ir import Node, SymbpError, broadcast_shapes
from symbp.registry import LazyModule, OpDef, opdef, register

sp = LazyModule("sympy")
S = LazyModule("symbp.ops.scalar")  # SymPy functions: imported with SymPy, when a formula is first read


def number(v) -> sp.Expr:
    """A Python number as an exact SymPy constant where it is an integer."""
    if isinstance(v, (bool, np.bool_)):
        v = int(v)
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer() and math.fabs(v) < 2**31):
        return sp.Integer(int(v))
    if not math.isfinite(float(v)):
        raise SymbpError(f"constant {v!r} is not finite")
    return sp.Float(float(v), 17)


def make(op: str, nodes: list[Node], expr: sp.Expr, attrs: dict | None = None,
         label: str | None = None) -> Node:
    """An elementwise node computing ``expr`` (over x0.. = ``nodes``) with broadcasting."""
    shape = broadcast_shapes([n.shape for n in nodes],
                             f"op {op!r} on " + ", ".join(n.describe() for n in nodes))
    xs = S.symbols(len(nodes))
    used = [i for i, x in enumerate(xs) if expr.has(x)]
    if len(used) < len(nodes) and broadcast_shapes([nodes[i].shape for i in used], op) == shape:
        # Drop inputs the formula no longer mentions (e.g. x*0 after simplification).
        expr = expr.xreplace({xs[i]: S.symbols(len(used))[k] for k, i in enumerate(used)})
        nodes = [nodes[i] for i in used]
    if expr.is_Symbol and len(nodes) == 1 and nodes[0].shape == shape:
        return nodes[0]  # identity
    if not nodes:
        from symbp.ops.structural import const

        return const(float(expr))
    return Node(op, nodes, shape, "float", {"expr": expr, **(attrs or {})}, label=label)


def apply(op: str, *args, label: str | None = None, **attrs) -> Node:
    """Apply the elementwise op ``op`` to nodes and Python numbers."""
    od = opdef(op)
    nodes: list[Node] = []
    for a in args:
        if isinstance(a, Node):
            if a.dtype != "float":
                raise SymbpError(f"op {op!r}: {a.describe()} has dtype {a.dtype}; "
                                 "elementwise ops take float tensors")
            if not (a.op == "const" and a.shape == ()) and a not in nodes:
                nodes.append(a)
        elif not isinstance(a, Number):
            raise SymbpError(f"op {op!r}: cannot use a {type(a).__name__} as a tensor; "
                             "use m.input, m.param or sb.constant")
    if not attrs and len(nodes) == len(args):
        # Every argument a distinct tensor: nothing to fold or simplify away (no x*0, no x - x),
        # so the formula can wait until derivation or code generation reads it.
        shape = broadcast_shapes([n.shape for n in nodes], f"op {op!r} on " + ", ".join(n.describe() for n in nodes))
        node = Node(op, nodes, shape, "float", label=label)
        node.attrs = Formula(op, len(nodes))
        return node
    xs = S.symbols(len(nodes))
    sym_args = [xs[nodes.index(a)] if isinstance(a, Node) and a in nodes
                else number(a.attrs["value"] if isinstance(a, Node) else a) for a in args]
    expr = od.formula(*sym_args, **attrs)
    return make(op, nodes, expr, attrs, label)


class Formula(dict):
    """The attrs of an elementwise node whose formula ``"expr"`` is built when first read.

    ``apply`` makes these when SymPy has nothing to simplify; the formula is
    ``opdef(op).formula(x0, ..)``, a pure function of ``recipe`` = (op, arity). Reading
    ``["expr"]``, ``.get``, ``.items()``, ``.values()``, ``==``, copying (``dict(attrs)``,
    ``{**attrs}``, which go through ``__getitem__`` because ``__iter__`` is overridden) all see
    the formula. The compiled-module cache key reads neither (the op and its arity determine
    it), so a warm start never builds it.
    """

    def __init__(self, op: str, arity: int):
        super().__init__(expr=None)
        self.recipe = (op, arity)

    def built(self) -> bool:
        return dict.__getitem__(self, "expr") is not None

    def _build(self) -> None:
        if not self.built():
            op, arity = self.recipe
            dict.__setitem__(self, "expr", opdef(op).formula(*S.symbols(arity)))

    def __getitem__(self, key):
        if key == "expr":
            self._build()
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def items(self):
        self._build()
        return dict.items(self)

    def values(self):
        self._build()
        return dict.values(self)

    def __iter__(self):  # overridden, so dict(attrs) and {**attrs} copy through __getitem__
        return dict.__iter__(self)

    def copy(self) -> dict:
        return dict(self)

    def __eq__(self, other):
        for attrs in (self, other):
            if isinstance(attrs, Formula):
                attrs._build()
        return dict.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def __repr__(self) -> str:
        self._build()
        return dict.__repr__(self)


def vjp(node: Node, g: Node) -> list:
    """Cotangents of an elementwise node's inputs: g * d expr / d x_i (shape of the node)."""
    expr = node.attrs["expr"]
    n = len(node.inputs)
    # In the backward formula: x0 is g, x1..xn the node's inputs, x{n+1} its output.
    xs = S.symbols(n + 2)
    rename = {S.symbols(n)[j]: xs[j + 1] for j in range(n)}
    rename[S.Y] = xs[n + 1]
    out = []
    for i in range(n):
        d = S.partial(expr, i)
        if d == 0:
            out.append(None)
            continue
        e = (S.G * d).xreplace({**rename, S.G: xs[0]})
        out.append(make("ew", [g, *node.inputs, node], e))
    return out


# -- declarations ---------------------------------------------------------------------------

POSITIVE = {"low": 0.5, "high": 2.0}


def _ew(name: str, formula, sample: dict | None = None, **extra) -> None:
    register(OpDef(name, "elementwise", formula=formula, vjp=vjp,
                   sample={"arity": formula.__code__.co_argcount, **(sample or {})}, **extra))


_ew("add", lambda a, b: a + b)
_ew("sub", lambda a, b: a - b)
_ew("mul", lambda a, b: a * b)
_ew("div", lambda a, b: a / b, {"low": 0.5, "high": 2.0})
_ew("neg", lambda a: -a)
_ew("power", lambda a, exponent: a ** exponent, {"attrs": {"exponent": 3}})
_ew("exp", lambda a: sp.exp(a))
_ew("log", lambda a: sp.log(a), POSITIVE)
_ew("sqrt", lambda a: sp.sqrt(a), POSITIVE)
_ew("abs", lambda a: sp.Abs(a), {"avoid_zero": True})
_ew("tanh", lambda a: sp.tanh(a))
_ew("sigmoid", lambda a: S.sigmoid(a))
_ew("relu", lambda a: S.relu(a), {"avoid_zero": True})
_ew("leaky_relu", lambda a, alpha=0.01: S.select(a, a, alpha * a),
    {"attrs": {"alpha": 0.1}, "avoid_zero": True})
_ew("elu", lambda a, alpha=1.0: S.elu(a, alpha), {"attrs": {"alpha": 1.0}, "avoid_zero": True})
_ew("softplus", lambda a: S.softplus(a))
_ew("gelu", lambda a: a / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (a + sp.Rational(44715, 10**6) * a**3))))
_ew("swish", lambda a: a * S.sigmoid(a))
_ew("log1p", lambda a: S.log1p(a), POSITIVE)
_ew("expm1", lambda a: S.expm1(a))
_ew("where", lambda c, a, b: S.select(c, a, b), {"nondiff": (0,), "avoid_zero": True})
_ew("maximum", lambda a, b: S.select(a - b, a, b), {"avoid_zero": True})
_ew("minimum", lambda a, b: S.select(b - a, a, b), {"avoid_zero": True})
_ew("greater", lambda a, b: S.select(a - b, 1, 0), {"nondiff": (0, 1)})
# Binary cross-entropy on logits z with targets t: softplus(z) - z*t, stable for any z.
_ew("bce_logits", lambda z, t: S.softplus(z) - z * t, {"low": 0.05, "high": 0.95})
# The general elementwise node made by derivation and fusion: its formula is given whole.
register(OpDef("ew", "elementwise", formula=None, vjp=vjp))


# -- user-facing functions ------------------------------------------------------------------

def add(a, b): return apply("add", a, b)
def sub(a, b): return apply("sub", a, b)
def mul(a, b): return apply("mul", a, b)
def div(a, b): return apply("div", a, b)
def neg(a): return apply("neg", a)
def exp(x): return apply("exp", x)
def log(x): return apply("log", x)
def sqrt(x): return apply("sqrt", x)
def abs(x): return apply("abs", x)  # noqa: A001 - mirrors numpy's name
def tanh(x): return apply("tanh", x)
def sigmoid(x): return apply("sigmoid", x)
def relu(x): return apply("relu", x)
def leaky_relu(x, alpha: float = 0.01): return apply("leaky_relu", x, alpha=number(alpha))
def elu(x, alpha: float = 1.0): return apply("elu", x, alpha=number(alpha))
def softplus(x): return apply("softplus", x)
def gelu(x): return apply("gelu", x)
def swish(x): return apply("swish", x)
def log1p(x): return apply("log1p", x)
def expm1(x): return apply("expm1", x)
def maximum(a, b): return apply("maximum", a, b)
def minimum(a, b): return apply("minimum", a, b)
def greater(a, b): return apply("greater", a, b)


def where(cond, a, b):
    """a where cond > 0, else b (cond is typically a 0/1 mask such as ``x > 0``)."""
    return apply("where", cond, a, b)


def power(a, exponent):
    if isinstance(exponent, Node):
        raise SymbpError("x ** y needs a constant exponent; use sb.exp(y * sb.log(x)) for a tensor one")
    return apply("power", a, exponent=number(exponent))
