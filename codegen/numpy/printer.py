"""Print a fused elementwise SymPy formula as NumPy ufunc calls writing into buffers.

``np.tanh(a + b)`` would allocate a fresh array per operator on every step; instead each
operator becomes one ufunc call with ``out=`` into a preallocated scratch buffer, after
SymPy's CSE. Stable forms are printed stably and with vectorised ufuncs only (NumPy's
``logaddexp`` is not vectorised: 6-20x slower): softplus as ``max(x, 0) + log1p(exp(-|x|))``,
sigmoid as ``exp(min(x, 0)) / (1 + exp(-|x|))``: neither can overflow, and both keep
their relative accuracy in the tails.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from symbp.ir import broadcast_shapes
from symbp.ops import scalar as S

UNARY = {
    sp.exp: "np.exp", sp.log: "np.log", sp.tanh: "np.tanh", sp.Abs: "np.abs", sp.sign: "np.sign",
    S.expm1: "np.expm1", S.log1p: "np.log1p", sp.cosh: "np.cosh", sp.sinh: "np.sinh",
}


class ScalarPrinter(PythonCodePrinter):
    """Python expressions for per-step scalars (hyperparameters, bias corrections)."""

    def _print_select(self, e):
        c, a, b = (self._print(x) for x in e.args)
        return f"({a} if {c} > 0 else {b})"

    def _print_Float(self, e):
        return repr(float(e))


def scalar_code(expr: sp.Expr) -> str:
    return ScalarPrinter({"standard": "python3"}).doprint(expr)


def literal(expr) -> str:
    return repr(float(expr))


class Scratch:
    """Named temporary buffers per shape; reset per kernel, sized to the largest need."""

    def __init__(self):
        self.need: dict[tuple, int] = {}
        self.used: dict[tuple, int] = {}
        self.names: dict[tuple, list[str]] = {}

    def reset(self):
        self.used = {}

    def take(self, shape: tuple) -> str:
        k = self.used.get(shape, 0)
        self.used[shape] = k + 1
        names = self.names.setdefault(shape, [])
        while len(names) <= k:
            names.append(f"_s{sum(len(v) for v in self.names.values())}")
        self.need[shape] = max(self.need.get(shape, 0), k + 1)
        return names[k]

    def specs(self) -> list[tuple[str, tuple]]:
        return [(name, shape) for shape, names in self.names.items() for name in names]


class KernelWriter:
    """Writes the ufunc calls for one formula.

    Args:
        env: symbol -> (code name, shape). Shape None marks a Python scalar.
        scratch: the shared Scratch pool.
        temp: allocates names for scalar temporaries (``Namer.temp``), from the same pool as
            every other name of the enclosing function, so they cannot overwrite one.
    """

    def __init__(self, env: dict, scratch: Scratch, temp: Callable[[str], str]):
        self.env = dict(env)
        self.scratch = scratch
        self.temp = temp
        self.lines: list[str] = []

    def shape(self, e) -> tuple:
        shapes = [self.env[s][1] for s in e.free_symbols if self.env[s][1] is not None]
        return broadcast_shapes(shapes, "kernel")

    def scalar_only(self, e) -> bool:
        return all(self.env[s][1] is None for s in e.free_symbols)

    def write(self, expr: sp.Expr, out: str) -> list[str]:
        self.scratch.reset()
        expr = expr.replace(S.elu, lambda x, a: S.select(x, x, a * S.expm1(x)))
        subs, (final,) = sp.cse(expr, symbols=sp.numbered_symbols("_cse", real=True), order="none")
        for sym, sub in subs:
            if self.scalar_only(sub):
                name = self.temp("_c")
                self.lines.append(f"{name} = {self.scalar(sub)}")
                self.env[sym] = (name, None)
            else:
                shape = self.shape(sub)
                name = self.scratch.take(shape)
                self.into(sub, name)
                self.env[sym] = (name, shape)
        reads = {self.env[s][0] for s in final.free_symbols}
        if out in reads and not final.is_Symbol:
            tmp = self.scratch.take(self.shape(final))
            self.into(final, tmp)
            self.lines.append(f"np.copyto({out}, {tmp})")
        else:
            self.into(final, out)
        return self.lines

    def scalar(self, e) -> str:
        return scalar_code(e.xreplace({s: sp.Symbol(self.env[s][0]) for s in e.free_symbols}))

    def val(self, e) -> str:
        """An operand: a name, a literal or a freshly computed scratch buffer."""
        if e.is_Symbol:
            return self.env[e][0]
        if e.is_Number or e.is_NumberSymbol:
            return literal(e)
        if self.scalar_only(e):
            return f"({self.scalar(e)})"
        name = self.scratch.take(self.shape(e))
        self.into(e, name)
        return name

    def emit(self, line: str):
        self.lines.append(line)

    def into(self, e, out: str) -> None:  # noqa: C901 - one case per SymPy node type
        if e.is_Symbol or e.is_Number or e.is_NumberSymbol or self.scalar_only(e):
            self.emit(f"np.copyto({out}, {self.val(e)})")
        elif e.is_Add:
            # a - b as one subtract, not a negate and an add
            args = sorted(e.args, key=lambda a: a.could_extract_minus_sign())
            signs = [a.could_extract_minus_sign() for a in args]
            terms = [self.val(-a if neg else a) for a, neg in zip(args, signs)]
            if signs[0]:
                self.emit(f"np.negative({terms[0]}, out={out})")
                first, rest = out, zip(signs[1:], terms[1:])
            else:
                first, rest = terms[0], None
            if rest is None:
                self.emit(f"np.{'subtract' if signs[1] else 'add'}({first}, {terms[1]}, out={out})")
                rest = zip(signs[2:], terms[2:])
            for neg, t in rest:
                self.emit(f"np.{'subtract' if neg else 'add'}({out}, {t}, out={out})")
        elif e.is_Mul:
            self.mul(e, out)
        elif e.is_Pow:
            self.pow(e.base, e.exp, out)
        elif isinstance(e, S.select) and e.args[1:] == (1, 0):
            self.emit(f"np.greater({self.val(e.args[0])}, 0.0, out={out})")  # a 0/1 mask
        elif isinstance(e, S.select):
            c, a, b = (self.val(x) for x in e.args)
            self.emit(f"np.copyto({out}, {b})")
            self.emit(f"np.copyto({out}, {a}, where={c} > 0)")
        elif isinstance(e, S.relu):
            self.emit(f"np.maximum({self.val(e.args[0])}, 0.0, out={out})")
        elif isinstance(e, S.softplus):
            x = self.val(e.args[0])
            tmp = self.scratch.take(self.shape(e))
            self.emit(f"np.abs({x}, out={tmp})")
            self.emit(f"np.negative({tmp}, out={tmp})")
            self.emit(f"np.exp({tmp}, out={tmp})")
            self.emit(f"np.log1p({tmp}, out={tmp})")
            self.emit(f"np.maximum({x}, 0.0, out={out})")
            self.emit(f"np.add({out}, {tmp}, out={out})")
        elif isinstance(e, S.sigmoid):
            # exp(min(x, 0)) / (1 + exp(-|x|)): accurate in both tails (log(sigmoid(-40))
            # stays finite), never overflows, and every ufunc is vectorised (a masked
            # `where=` multiply would cost more than a second exp).
            x = self.val(e.args[0])
            tmp = self.scratch.take(self.shape(e))
            self.emit(f"np.minimum({x}, 0.0, out={out})")
            self.emit(f"np.exp({out}, out={out})")
            self.emit(f"np.abs({x}, out={tmp})")
            self.emit(f"np.negative({tmp}, out={tmp})")
            self.emit(f"np.exp({tmp}, out={tmp})")
            self.emit(f"np.add({tmp}, 1.0, out={tmp})")
            self.emit(f"np.divide({out}, {tmp}, out={out})")
        elif e.func in UNARY:
            self.emit(f"{UNARY[e.func]}({self.val(e.args[0])}, out={out})")
        else:
            raise NotImplementedError(f"numpy backend: no printer for {e.func.__name__}")

    def mul(self, e, out: str) -> None:
        coeff, factors = e.as_coeff_mul()
        num = [f for f in factors if not (f.is_Pow and f.exp.is_Number and f.exp < 0)]
        den = [f.base ** -f.exp for f in factors if f not in num]
        if coeff == -1 and len(num) == 1 and not den:
            self.emit(f"np.negative({self.val(num[0])}, out={out})")
            return
        nums = [self.val(f) for f in num]
        dens = [self.val(f) for f in den]
        if not nums:
            self.emit(f"np.divide({literal(coeff)}, {dens[0]}, out={out})")
            dens = dens[1:]
        elif len(nums) == 1:
            if coeff != 1:
                self.emit(f"np.multiply({nums[0]}, {literal(coeff)}, out={out})")
            elif dens:
                self.emit(f"np.divide({nums[0]}, {dens.pop(0)}, out={out})")
            else:
                self.emit(f"np.copyto({out}, {nums[0]})")
        else:
            self.emit(f"np.multiply({nums[0]}, {nums[1]}, out={out})")
            for f in nums[2:]:
                self.emit(f"np.multiply({out}, {f}, out={out})")
            if coeff != 1:
                self.emit(f"np.multiply({out}, {literal(coeff)}, out={out})")
        for d in dens:
            self.emit(f"np.divide({out}, {d}, out={out})")

    def pow(self, base, exp, out: str) -> None:
        b = self.val(base)
        if exp == 2:
            self.emit(f"np.square({b}, out={out})")
        elif exp == sp.Rational(1, 2):
            self.emit(f"np.sqrt({b}, out={out})")
        elif exp == -1:
            self.emit(f"np.divide(1.0, {b}, out={out})")
        elif exp == sp.Rational(-1, 2):
            self.emit(f"np.sqrt({b}, out={out})")
            self.emit(f"np.divide(1.0, {out}, out={out})")
        elif exp == 3:
            self.emit(f"np.multiply({b}, {b}, out={out})")
            self.emit(f"np.multiply({out}, {b}, out={out})")
        elif exp.is_Number:
            self.emit(f"np.power({b}, {literal(exp)}, out={out})")
        else:
            self.emit(f"np.power({b}, {self.val(exp)}, out={out})")
