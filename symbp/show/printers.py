"""Text and LaTeX printers for display expressions (``symbp.notation``).

``TextPrinter`` prints one line of unicode (⊙, ᵀ, Σ_batch, subscript digits); ``TexPrinter``
prints LaTeX for an ``align*`` environment. Both share the layout rules of ``_Common``:
which terms need brackets, how a negative term and a scalar coefficient read.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.matrices.expressions import HadamardProduct, MatAdd, MatMul, Transpose
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from symbp.notation import Bcast, Delta, Div, Fill, Func, Grad, SDelta, SFunc, SGrad, is_matrix, split_coeff

_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


_ATOMS = (sp.Symbol, sp.MatrixSymbol, Delta, Grad, SDelta, SGrad, Func, SFunc, sp.Number)


def _atomic(e) -> bool:
    if isinstance(e, (Bcast, Fill)):
        return _atomic(e.args[0])
    if isinstance(e, Transpose):
        return True  # printed as (…)ᵀ when its argument needs brackets
    if isinstance(e, (Func, SFunc)):
        return not (e.name == "Σ" and _atomic(e.operands[0]))  # "Σ_batch δZ" binds loosely
    return isinstance(e, _ATOMS) or not is_matrix(e) and _scalar_atomic(e)


def _scalar_atomic(e) -> bool:
    return not (e.is_Add or e.is_Mul or e.is_Rational and not e.is_Integer or e.could_extract_minus_sign())


def _negative(e) -> bool:
    if isinstance(e, Fill):
        return e.args[0].could_extract_minus_sign()
    return isinstance(e, MatMul) and split_coeff(e)[0].could_extract_minus_sign()


def _negate(e):
    if isinstance(e, Fill):
        return Fill(-e.args[0], *e.shape)
    c, mats = split_coeff(e)
    return MatMul(-c, *mats) if -c != 1 else (mats[0] if len(mats) == 1 else MatMul(*mats))


class _Common:
    """Layout shared by the two printers; each supplies the symbols (``_sym``)."""

    def paren(self, e) -> str:
        return self._print(e) if _atomic(e) else self._sym["(" ] + self._print(e) + self._sym[")"]

    def _print_Bcast(self, e):
        return self._print(e.args[0])

    def _print_Fill(self, e):
        return self._print(e.args[0]) if _atomic(e.args[0]) else self.paren(e.args[0])

    def _print_MatAdd(self, e):
        terms = sorted(e.args, key=_negative)  # stable: a positive term leads where there is one
        out = self._print(terms[0])
        for t in terms[1:]:
            out += f" {self._sym['-']} " + self._term(_negate(t)) if _negative(t) else " + " + self._term(t)
        return out

    def _term(self, t):
        return self.paren(t) if isinstance(t, MatAdd) else self._print(t)

    def _print_HadamardProduct(self, e):
        simple = all(isinstance(a, (sp.MatrixSymbol, Delta)) for a in e.args) and self._sym["⊙"] == "⊙"
        joiner = self._sym["⊙"] if simple else f" {self._sym['⊙']} "
        return joiner.join(self.paren(a) for a in e.args)

    def _print_MatMul(self, e):
        c, mats = split_coeff(e)
        num, den = sp.fraction(c)
        sign = ""
        if num.could_extract_minus_sign():
            sign, num = self._sym["-"], -num
        bare = (MatAdd, Div, MatMul) if len(mats) == 1 else (MatAdd, HadamardProduct, Div, MatMul)
        body = " ".join(self.paren(m) if isinstance(m, bare) else self._print(m) for m in mats)
        if den != 1 and len(mats) == 1 and not self._frac_parens:
            body = self._print(mats[0])
        if num != 1:
            body = (self._print(num) if _atomic(num) else self.paren(num)) + self._sym["*"] + body
        return sign + (self._frac(body, mats, den) if den != 1 else body)


class TextPrinter(_Common, StrPrinter):
    """One-line unicode: ⊙ for elementwise products, ᵀ for transposes, Σ_batch for batch sums."""

    _sym = {"(": "(", ")": ")", "-": "−", "⊙": "⊙", "*": " "}
    _frac_parens = True

    def _print_Symbol(self, e):
        return re.sub(r"_(\d+)$", lambda m: m.group(1).translate(_SUB), e.name)

    _print_MatrixSymbol = _print_Symbol

    def _print_Float(self, e):
        return repr(float(e))

    def _print_Delta(self, e):
        return "δ" + self._print(e.args[0])

    _print_SDelta = _print_Delta

    def _print_Grad(self, e):
        return f"∂{self._print(e.args[0])}/∂{self._print(e.args[1])}"

    _print_SGrad = _print_Grad

    def _print_Transpose(self, e):
        return self.paren(e.arg) + "ᵀ"

    def _print_HadamardPower(self, e):
        return f"{self.paren(e.base)}^⊙{self._print(e.exp)}"

    def _frac(self, body, mats, den):
        bare = len(mats) == 1 and (_atomic(mats[0]) or isinstance(mats[0], (MatAdd, HadamardProduct, Div)))
        return (body if bare else f"({body})") + "/" + (self._print(den) if _atomic(den) else self.paren(den))

    def _print_Div(self, e):
        return self.paren(e.args[0]) + "/" + self.paren(e.args[1])

    def _print_Func(self, e):
        args = [self._print(a) for a in e.operands]
        if e.name == "𝟙":
            return f"𝟙[{args[0]} > 0]"
        if e.name == "where":
            return f"where({args[0]} > 0, {', '.join(args[1:])})"
        if e.name == "abs":
            return f"|{args[0]}|"
        if e.name == "index":
            return f"{self.paren(e.operands[0])}[{e.sub}]"
        head = e.name + (f"_[{e.sub}]" if " " in e.sub else f"_{e.sub}" if e.sub else "")
        if e.name == "Σ" and _atomic(e.operands[0]):
            return f"{head} {args[0]}"
        return f"{head}({', '.join(args)})"

    _print_SFunc = _print_Func

    def doprint(self, expr):
        return super().doprint(expr).replace("-", "−").replace("**", "^").replace("*", "·")


_LATEX_FUNCS = {"tanh": r"\tanh", "exp": r"\exp", "log": r"\log", "σ": r"\sigma", "Σ": r"\sum", "max": r"\max",
                "sinh": r"\sinh", "cosh": r"\cosh", "sign": r"\operatorname{sign}"}
_PLAIN_NAME = re.compile(r"^[A-Za-z]+(_?\d+)?$")


class TexPrinter(_Common, LatexPrinter):
    """LaTeX for an align environment: ⊙ as \\odot, transposes as ^\\top, reductions as \\sum."""

    _sym = {"(": r"\left(", ")": r"\right)", "-": "-", "⊙": r"\odot", "*": " "}
    _frac_parens = False

    def _print_Symbol(self, e, style="plain"):
        if _PLAIN_NAME.match(e.name):
            return super()._print_Symbol(e, style)
        return r"\mathrm{" + e.name.replace("_", r"\_") + "}"

    def _print_MatrixSymbol(self, e):
        return self._print_Symbol(e)

    def _print_Float(self, e):
        mantissa, _, exponent = repr(float(e)).partition("e")
        return mantissa + (rf" \cdot 10^{{{int(exponent)}}}" if exponent else "")

    def _print_Delta(self, e):
        return r"\delta " + self._print(e.args[0])

    _print_SDelta = _print_Delta

    def _print_Grad(self, e):
        return rf"\frac{{\partial {self._print(e.args[0])}}}{{\partial {self._print(e.args[1])}}}"

    _print_SGrad = _print_Grad

    def _print_Transpose(self, e):
        return self.paren(e.arg) + r"^{\top}"

    def _print_HadamardPower(self, e):
        return rf"{self.paren(e.base)}^{{\odot {self._print(e.exp)}}}"

    def _frac(self, body, mats, den):
        return rf"\frac{{{body}}}{{{self._print(den)}}}"

    def _print_Div(self, e):
        return rf"\frac{{{self._print(e.args[0])}}}{{{self._print(e.args[1])}}}"

    def _print_Func(self, e):
        args = [self._print(a) for a in e.operands]
        if e.name == "𝟙":
            return rf"\mathbf{{1}}\left[{args[0]} > 0\right]"  # amsmath alone: \mathbb needs amssymb
        if e.name == "where":
            return rf"\operatorname{{where}}\left({args[0]} > 0, {', '.join(args[1:])}\right)"
        if e.name == "abs":
            return rf"\left|{args[0]}\right|"
        if e.name == "sqrt":
            return rf"\sqrt{{{args[0]}}}"
        if e.name == "index":
            return rf"{self.paren(e.operands[0])}\left[{e.sub}\right]"
        head = _LATEX_FUNCS.get(e.name, rf"\operatorname{{{_tex_escape(e.name)}}}")
        if e.sub:
            head += "_{" + (e.sub if len(e.sub) == 1 else rf"\text{{{_tex_escape(e.sub)}}}") + "}"
        if e.name == "Σ" and _atomic(e.operands[0]):
            return f"{head} {args[0]}"
        return head + r"\left(" + ", ".join(args) + r"\right)"

    _print_SFunc = _print_Func


def _tex_escape(s: str) -> str:
    # → joins an einsum's operand and result subscripts; LaTeX source stays ASCII
    return re.sub(r"([_&%#$])", r"\\\1", s).replace("→", r"$\to$")
