"""The words derived equations are written in: SymPy display expressions and display shapes.

A displayed equation is a SymPy matrix expression: ``MatrixSymbol`` for named tensors,
``MatMul``/``Transpose`` for products, ``HadamardProduct`` for elementwise products, plus
the small classes below for what SymPy has no matrix form of (an elementwise function
applied to a matrix, a reduction, a broadcast constant). They exist only to be printed:
derivation never goes through them (SymPy's matrix calculus is not reliable; see DESIGN).

This module sits beside the IR and the registry because each op declares how it reads
(``OpDef.show``) in these words; ``symbp.show`` turns them into text and LaTeX.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions import HadamardPower, HadamardProduct, MatAdd, MatMul, MatrixExpr, Transpose

from symbp.ir import Node


class Func(MatrixExpr):
    """``name_sub(args)`` applied elementwise or along axes, with the result's shape."""

    def __new__(cls, name: str, sub: str, rows, cols, *args):
        return sp.Basic.__new__(cls, Str(name), Str(sub), sp.sympify(rows), sp.sympify(cols),
                                *map(sp.sympify, args))

    name = property(lambda self: self.args[0].name)
    sub = property(lambda self: self.args[1].name)
    operands = property(lambda self: self.args[4:])
    shape = property(lambda self: (self.args[2], self.args[3]))


class SFunc(sp.Expr):
    """The scalar counterpart of Func, for results of shape () (a sum over every axis)."""

    is_commutative = True  # a scalar: MatMul must be able to pull it out as a coefficient

    def __new__(cls, name: str, sub: str, *args):
        return sp.Expr.__new__(cls, Str(name), Str(sub), *map(sp.sympify, args))

    name = property(lambda self: self.args[0].name)
    sub = property(lambda self: self.args[1].name)
    operands = property(lambda self: self.args[2:])


class Fill(MatrixExpr):
    """A matrix filled with one scalar: prints as the scalar (the ``1`` in ``1 − H⊙H``)."""

    def __new__(cls, value, rows, cols):
        return sp.Basic.__new__(cls, sp.sympify(value), sp.sympify(rows), sp.sympify(cols))

    shape = property(lambda self: (self.args[1], self.args[2]))


class Bcast(MatrixExpr):
    """A matrix broadcast to a larger shape (a bias row over the batch): prints as itself."""

    def __new__(cls, x, rows, cols):
        return sp.Basic.__new__(cls, x, sp.sympify(rows), sp.sympify(cols))

    shape = property(lambda self: (self.args[1], self.args[2]))


class Div(MatrixExpr):
    """Elementwise quotient of two matrices of one shape."""

    def __new__(cls, num, den):
        return sp.Basic.__new__(cls, num, den)

    shape = property(lambda self: self.args[0].shape)


class Delta(MatrixExpr):
    """δX: the gradient of the loss with respect to the named tensor X."""

    def __new__(cls, x):
        return sp.Basic.__new__(cls, x)

    shape = property(lambda self: self.args[0].shape)


class Grad(MatrixExpr):
    """∂L/∂W: the gradient of the loss with respect to a parameter."""

    def __new__(cls, loss, param):
        return sp.Basic.__new__(cls, loss, param)

    shape = property(lambda self: self.args[1].shape)


class SDelta(sp.Expr):
    """δx for a scalar x."""

    is_commutative = True  # a scalar: MatMul must be able to pull it out as a coefficient


class SGrad(sp.Expr):
    """∂L/∂w for a scalar parameter w."""

    is_commutative = True  # a scalar: MatMul must be able to pull it out as a coefficient


def delta(x) -> sp.Basic:
    """δx, a matrix or a scalar like ``x``."""
    return Delta(x) if is_matrix(x) else SDelta(x)


def grad(loss, param) -> sp.Basic:
    """∂loss/∂param, a matrix or a scalar like ``param``."""
    return Grad(loss, param) if is_matrix(param) else SGrad(loss, param)


def func(name: str, shape: tuple, *args, sub: str = "") -> sp.Basic:
    """A function applied to display expressions, as a matrix of ``shape`` (or a scalar).

    Args:
        name: how it reads ("tanh", "Σ", "onehot", ...).
        shape: the display shape (rows, cols), or () for a scalar.
        args: display expressions (matrices or scalars).
        sub: a subscript, e.g. the axes of a reduction ("batch", "j").
    Returns:
        A Func (matrix) or SFunc (scalar) expression.
    """
    return SFunc(name, sub, *args) if shape == () else Func(name, sub, *shape, *args)


def is_matrix(e) -> bool:
    return isinstance(e, MatrixExpr)


def split_coeff(e: MatMul) -> tuple:
    """Split a MatMul into its scalar coefficient and its matrix factors."""
    scal = [a for a in e.args if not is_matrix(a)]
    return sp.Mul(*scal), [a for a in e.args if is_matrix(a)]


# -- shapes and labels ---------------------------------------------------------------------------

B = sp.Symbol("B", positive=True, integer=True)


def dshape(shape: tuple) -> tuple:
    """A tensor shape as a display matrix shape: (None, n) -> (B, n); a 1-D parameter is a row."""
    dims = [B if d is None else d for d in shape]
    if not dims:
        return ()
    if len(dims) == 1:
        return (B, 1) if shape[0] is None else (1, dims[0])
    return (dims[0], sp.Mul(*dims[1:]) if len(dims) > 2 else dims[1])


def symbol(name: str, shape: tuple) -> sp.Basic:
    """The display symbol of a named tensor: a MatrixSymbol, or a Symbol for a scalar."""
    return sp.MatrixSymbol(name, *dshape(shape)) if shape else sp.Symbol(name)


def axes_label(x: Node, axes: tuple) -> str:
    """How a reduction's axes read: "batch" for the batch axis, "j" for the last one when it is
    all that is reduced (the classes of each example), else "axis<k>". A sum over the batch
    and the last axis of (batch, T) values, around a sum over their classes Σ_j, so reads
    Σ_batch,axis1 instead of reusing j."""
    last = len(axes) == 1
    return ",".join("batch" if x.shape[a] is None else "j" if last and a == x.ndim - 1 else f"axis{a}" for a in axes)


def format_index(idx: tuple) -> str:
    """The display of a normalised index (ints and ``slice.indices`` triples): ``:, 0:4, ::2``.

    Args:
        idx: per axis an int or (start, stop, step); (0, 0, 1) is the whole (batch) axis.
    Returns:
        Python slice notation; a backward slice to the first element omits its stop (4::-1).
    """
    return ", ".join(str(i) if isinstance(i, int) else ":" if i == (0, 0, 1) else _slice(*i) for i in idx)


def _slice(start: int, stop: int, step: int) -> str:
    if step < 0 and start < 0:  # slice.indices' form of an empty backward slice
        return "0:0"
    stop_text = "" if step < 0 and stop < 0 else str(stop)  # -1 would mean the last element
    return f"{start}:{stop_text}" + (f":{step}" if step != 1 else "")


__all__ = ["B", "Bcast", "Delta", "Div", "Fill", "Func", "Grad", "HadamardPower", "HadamardProduct", "MatAdd",
           "MatMul", "SDelta", "SFunc", "SGrad", "Transpose", "axes_label", "delta", "dshape", "format_index", "func",
           "grad", "is_matrix", "split_coeff", "symbol"]
