"""Scalar SymPy functions for elementwise ops.

Each function carries its own derivative (``fdiff``), written in terms of its own value
where that is cheaper, so the backward pass can reuse the forward output: sigmoid' is
y(1 - y), softplus' is -expm1(-y). The stable forms (softplus, sigmoid) stay opaque
functions: every backend prints them with an overflow-free formula, and SymPy never gets
the chance to rewrite them into one that overflows.
"""

from __future__ import annotations

import functools

import sympy as sp


class sigmoid(sp.Function):
    """1 / (1 + exp(-x))."""

    nargs = 1

    def fdiff(self, argindex=1):
        return self * (1 - self)


class softplus(sp.Function):
    """log(1 + exp(x)), computed without overflow."""

    nargs = 1

    def fdiff(self, argindex=1):
        # sigmoid(x) == 1 - exp(-softplus(x)); expm1 keeps it exact where y is tiny.
        return -expm1(-self)


class expm1(sp.Function):
    """exp(x) - 1, accurate near 0."""

    nargs = 1

    def fdiff(self, argindex=1):
        return self + 1


class log1p(sp.Function):
    """log(1 + x), accurate near 0."""

    nargs = 1

    def fdiff(self, argindex=1):
        return 1 / (1 + self.args[0])


class select(sp.Function):
    """select(c, a, b) is a where c > 0, else b.

    The condition is not differentiated (its derivative is zero almost everywhere), which
    avoids SymPy's Heaviside(0) = 1/2 and the DiracDelta terms of Piecewise derivatives.
    """

    nargs = 3

    def fdiff(self, argindex=1):
        c, _, _ = self.args
        if argindex == 1:
            return sp.S.Zero
        return select(c, 1, 0) if argindex == 2 else select(c, 0, 1)

    @classmethod
    def eval(cls, c, a, b):
        if a == b:
            return a
        if c.is_Number:
            return a if c > 0 else b
        return None


class relu(sp.Function):
    """max(x, 0)."""

    nargs = 1

    def fdiff(self, argindex=1):
        # In output form, 1[y > 0] (the same mask: relu(x) > 0 exactly where x > 0): the
        # backward reads the ReLU's output, so x need not be kept and bias + ReLU fuse.
        return select(self, 1, 0)


class elu(sp.Function):
    """x where x > 0, else alpha*(exp(x) - 1)."""

    nargs = 2

    def fdiff(self, argindex=1):
        x, alpha = self.args
        if argindex == 2:
            return select(x, 0, expm1(x))
        return select(x, 1, self + alpha)  # alpha*exp(x) == y + alpha on the negative side


FUNCTIONS = (sigmoid, softplus, expm1, log1p, select, relu, elu)
"""Every custom function; each backend's printer must know them all (a test checks)."""


@functools.cache
def symbols(n: int) -> tuple:
    """The input symbols x0..x{n-1} of an elementwise formula (real, so |x|' is sign(x))."""
    return tuple(sp.Symbol(f"x{i}", real=True) for i in range(n))


Y = sp.Symbol("y", real=True)
"""The op's own output, available to derivatives in output form."""

G = sp.Symbol("g", real=True)
"""The incoming cotangent in a backward formula."""


@functools.cache
def partial(expr: sp.Expr, i: int) -> sp.Expr:
    """d expr / d x_i, written in terms of the output ``Y`` where ``expr`` itself recurs.

    Cached per formula (not per node): SymPy work costs milliseconds, nodes are many.
    """
    x = symbols(i + 1)[i]
    d = sp.diff(expr, x)
    if expr.has(x) and not expr.is_Symbol:
        d = d.subs(expr, Y)
    return d
