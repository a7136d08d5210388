"""How each node reads in an equation: its op's own ``OpDef.show``, elementwise formulas
translated to matrix form, and the softmax family recognised as one function.

Display expressions are built from ``symbp.notation`` (SymPy matrix expressions); nothing
here takes part in derivation.
"""

from __future__ import annotations

import sympy as sp

from symbp import notation as D
from symbp.ir import Node
from symbp.notation import dshape
from symbp.ops.scalar import symbols
from symbp.registry import OPS

FUNC_NAMES = {"sigmoid": "σ", "Abs": "abs"}
"""SymPy function names that read differently in an equation."""


def show_op(n: Node, args: list) -> sp.Basic:
    """The display expression of node ``n``: its op's own ``OpDef.show`` (declared with the
    op), the matrix form of an elementwise formula, or else ``op(args)``.

    Args:
        n: a graph node.
        args: the display forms of its inputs, in order (None for inputs read only for
            their shape, such as the tensor ``size`` counts).
    Returns:
        A SymPy expression: a matrix expression, or a scalar for a shape-() result.
    """
    od = OPS.get(n.op)
    try:
        if od is not None and od.show is not None:
            return od.show(args, n)
        if "expr" in n.attrs:
            return translate(n.attrs["expr"], args, dshape(n.shape))
    except (sp.matrices.exceptions.ShapeError, AttributeError, TypeError, ValueError, NotImplementedError):
        # Tensors of 3+ axes are shown flattened to matrices, where a matrix form can fail to
        # line up (a (B, T·F) sequence times an (F, H) weight): then the op reads as op(args).
        pass
    if n.op == "dot":  # read as a call, the product still shows which operand it transposes
        args = [D.Transpose(a) if n.attrs[flag] and D.is_matrix(a) else a for a, flag in zip(args, ("ta", "tb"))]
    return D.func(n.op, dshape(n.shape), *[a for a in args if a is not None])


def translate(expr: sp.Expr, args: list, shape: tuple) -> sp.Basic:
    """Map an elementwise formula over x0..xn to a matrix display expression.

    Products of matrices become Hadamard products, quotients elementwise divisions,
    squares H⊙H, functions of matrices Func; parts that involve only scalars stay scalar.

    Args:
        expr: the node's ``attrs["expr"]``.
        args: the display forms of x0..xn (matrix expressions or scalars).
        shape: the display shape of the result (every matrix operand is broadcast to it).
    Returns:
        The display expression.
    """
    xs = symbols(len(args))
    env = dict(zip(xs, args))
    scalar_env = {x: a for x, a in env.items() if not D.is_matrix(a)}
    expr = expr.xreplace(scalar_env)  # constants and scalars fold into the formula first
    # 8943/200000 reads better as 0.044715; small fractions (1/2, 2/3) stay exact.
    expr = expr.xreplace({r: sp.Float(r) for r in expr.atoms(sp.Rational) if r.q > 100})

    def fit(e):
        if not D.is_matrix(e):
            return D.Fill(e, *shape) if shape else e
        return e if e.shape == shape or not shape else D.Bcast(e, *shape)

    def product(factors):
        coef, mats = sp.S.One, []
        for p in map(go, factors):
            if isinstance(p, D.MatMul) and sum(map(D.is_matrix, p.args)) == 1:
                c, p = D.split_coeff(p)  # fold −(A⊙B) into the coefficient of the product
                coef, p = coef * c, p[0]
            if not D.is_matrix(p):
                coef *= p
            else:
                mats.extend(p.args if isinstance(p, D.HadamardProduct) else [fit(p)])
        if not mats:
            return coef
        body = mats[0] if len(mats) == 1 else D.HadamardProduct(*mats)
        if coef == 1:
            return body
        return D.MatMul(coef, *(body.args if isinstance(body, D.MatMul) else [body]))

    def go(e):
        if e in env:
            return env[e]
        if not e.free_symbols & set(xs):
            return e
        if e.is_Add:
            terms = [go(a) for a in e.args]
            if not any(map(D.is_matrix, terms)):
                return sp.Add(*terms)
            flat = [a for t in terms for a in (t.args if isinstance(t, D.MatAdd) else [t])]
            return D.MatAdd(*[fit(t) for t in flat])
        if e.is_Mul:
            num = [f for f in e.args if not (f.is_Pow and f.exp.is_negative)]
            den = [f.base ** -f.exp for f in e.args if f.is_Pow and f.exp.is_negative]
            top, bottom = product(num), product(den)
            if not D.is_matrix(bottom):
                return product([*num, 1 / bottom]) if D.is_matrix(top) else top / bottom
            return D.Div(fit(top), fit(bottom))
        if e.is_Pow:
            base = go(e.base)
            if not D.is_matrix(base):
                return base ** e.exp
            if e.exp.is_negative:
                return D.Div(fit(1), fit(go(e.base ** -e.exp)))
            if e.exp == 2:
                return D.HadamardProduct(fit(base), fit(base))
            if e.exp == sp.S.Half:
                return D.func("sqrt", shape, fit(base))
            return D.HadamardPower(fit(base), e.exp)
        args_ = [go(a) for a in e.args]
        if not any(map(D.is_matrix, args_)):
            return e.func(*args_)
        args_ = [fit(a) if D.is_matrix(a) else a for a in args_]
        name = getattr(e.func, "__name__", type(e).__name__)
        if name == "select":
            c, a, b = e.args
            if (a, b) == (1, 0):
                return D.func("𝟙", shape, args_[0])
            if c == a - b or c == b - a:  # maximum and minimum
                return D.func("max" if c == a - b else "min", shape, *args_[1:])
            if (a, b) == (0, 1):
                return D.MatAdd(fit(1), D.MatMul(-1, D.func("𝟙", shape, args_[0])))
            return D.func("where", shape, *args_)
        return D.func(FUNC_NAMES.get(name, name), shape, *args_)

    return go(expr)


# -- the softmax family, as symbp.nn composes it ----------------------------------------------

def _walk(n: Node, *ops: str) -> list | None:
    """The chain n, n.inputs[0], ... if its ops are ``ops`` in order, else None."""
    chain = []
    for op in ops:
        if n.op != op:
            return None
        chain.append(n)
        n = n.inputs[0] if n.inputs else n
    return chain


def _shift(m: Node, x: Node) -> list | None:
    """``m`` is stop_gradient(max(x)), the shift that keeps exp from overflowing."""
    chain = _walk(m, "stop_gradient", "max")
    return chain if chain and chain[1].inputs[0] is x else None


def match_logsumexp(n: Node):
    """log(Σ exp(x − m)) + m: (x, axes, ids of its nodes), or None."""
    top = n.inputs[0] if n.op == "reshape" else n
    if top.op != "add" or len(top.inputs) != 2:
        return None
    chain = _walk(top.inputs[0], "log", "sum", "exp", "sub")
    if not chain or len(chain[3].inputs) != 2 or chain[3].inputs[1] is not top.inputs[1]:
        return None
    x = chain[3].inputs[0]
    shift = _shift(top.inputs[1], x)
    return shift and (x, chain[1].attrs["axes"], {n.id, top.id, *(c.id for c in chain + shift)})


def match_log_softmax(n: Node):
    """x − logsumexp(x): (x, axes, ids), or None."""
    found = n.op == "sub" and len(n.inputs) == 2 and match_logsumexp(n.inputs[1])
    return found and found[0] is n.inputs[0] and (found[0], found[1], found[2] | {n.id})


def match_softmax(n: Node):
    """e / Σ e with e = exp(x − m): (x, axes, ids), or None."""
    if n.op != "div" or len(n.inputs) != 2 or n.inputs[1].op != "sum" or n.inputs[1].inputs[0] is not n.inputs[0]:
        return None
    chain = _walk(n.inputs[0], "exp", "sub")
    if not chain or len(chain[1].inputs) != 2:
        return None
    shift = _shift(chain[1].inputs[1], chain[1].inputs[0])
    return shift and (chain[1].inputs[0], n.inputs[1].attrs["axes"],
                      {n.id, n.inputs[1].id, *(c.id for c in chain + shift)})


def match_cross_entropy(n: Node):
    """Σ(−Σ_j onehot(y) ⊙ log_softmax(z)) / size: (z, onehot node, size node, ids), or None."""
    if n.op != "div" or len(n.inputs) != 2 or n.inputs[1].op != "size":
        return None
    chain = _walk(n.inputs[0], "sum", "neg", "sum", "mul")
    if chain is None or len(chain[3].inputs) != 2 or chain[3].inputs[0].op != "onehot":
        return None
    mul = chain[3]
    found = match_log_softmax(mul.inputs[1])
    return found and (found[0], mul.inputs[0], n.inputs[1],
                      found[2] | {n.id, n.inputs[1].id, *(c.id for c in chain)})


COMPOSITES = (("log_softmax", match_log_softmax), ("softmax", match_softmax), ("logsumexp", match_logsumexp))
"""Composites shown as one function of their input, tried in this order."""
