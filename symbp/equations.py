"""Readable derived equations: the forward pass, the δ terms and each parameter's gradient.

The derivation's graph is turned into numbered equations in matrix form. A node gets its
own equation when it is a result (loss, output, gradient), is read more than once, is a
forward value the backward pass reads, is the tensor a named δ belongs to, or would make
its user's formula too long; everything else is inlined into its single user, the way the
fusion pass folds elementwise chains. Elementwise formulas (SymPy over x0..xn) are mapped
to matrix display expressions: products of tensors become Hadamard products. The printing
itself is SymPy's printers (symbp.display).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from symbp import display as D
from symbp.elementwise import number
from symbp.ir import Node, topo_order
from symbp.registry import OPS
from symbp.scalar import symbols

TRANSPARENT = {"stop_gradient", "expand_dims", "broadcast_like"}
"""Ops that leave values as they are (up to broadcasting): shown as their input."""

SHAPE_ONLY = {"broadcast_like": (1,), "unslice": (1,), "size": (0,)}
"""Inputs read only for their shape, which equations do not mention."""

ROLE = {"dot": "Z", "exp": "E", "sum": "S", "max": "M", "tanh": "H", "sigmoid": "H", "relu": "H", "elu": "H",
        "leaky_relu": "H", "softplus": "H", "gelu": "H", "swish": "H"}
"""The letter of an unnamed forward tensor, by op (affine results are Z too)."""

MAX_INLINE = 56  # characters: a longer inlined formula gets its own equation instead
MAX_DATA = 16  # a short formula of data alone (no parameter) is inlined wherever it is read
FUNC_NAMES = {"sigmoid": "σ", "Abs": "abs"}


@dataclass(frozen=True)
class Equation:
    """One numbered equation.

    Attributes:
        number: its number, from 1.
        lhs, rhs: SymPy display expressions (see symbp.display).
        node: the id of the graph node it computes.
        nodes: ids of every graph node folded into it (the node itself included).
        section: "forward", "backward" (δ terms) or "gradients".
    """

    number: int
    lhs: sp.Basic
    rhs: sp.Basic
    node: int
    nodes: tuple
    section: str

    def text(self) -> str:
        return f"{D.TextPrinter().doprint(self.lhs)} = {D.TextPrinter().doprint(self.rhs)}"

    def latex(self) -> str:
        return f"{D.TexPrinter().doprint(self.lhs)} &= {D.TexPrinter().doprint(self.rhs)}"


class Equations:
    """A model's derived equations: ``print`` it, or ``.latex()``; Jupyter renders it."""

    def __init__(self, name: str, entries: list[Equation]):
        self.name = name
        self.entries = entries
        self._by_node = {}
        for e in entries:
            for i in e.nodes:
                self._by_node.setdefault(i, e.number)

    def number(self, node: Node | int) -> int | None:
        """The number of the equation that computes ``node`` (a Node or its id), if any."""
        return self._by_node.get(node.id if isinstance(node, Node) else node)

    def text(self) -> str:
        """The equations as unicode text, one per line, grouped by section."""
        lines = [f"{self.name}: B = batch size, ⊙ = elementwise product, ᵀ = transpose, Σ_batch = sum over the batch"]
        for section in ("forward", "backward", "gradients"):
            rows = [e for e in self.entries if e.section == section]
            if not rows:
                continue
            lines.append(section)
            lhs = [D.TextPrinter().doprint(e.lhs) for e in rows]
            width, nw = max(map(len, lhs)), len(str(self.entries[-1].number)) + 2
            for e, left in zip(rows, lhs):
                lines.append(f"  {f'({e.number})':>{nw}}  {left:<{width}} = {D.TextPrinter().doprint(e.rhs)}")
        return "\n".join(lines)

    def latex(self) -> str:
        """The equations as a LaTeX ``align*`` environment, numbered with ``\\tag``."""
        rows = [f"{e.latex()} \\tag{{{e.number}}}" for e in self.entries]
        return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"

    def _repr_latex_(self) -> str:
        return self.latex()

    def __str__(self) -> str:
        return self.text()

    __repr__ = __str__

    def __len__(self) -> int:
        return len(self.entries)


# -- display of single ops --------------------------------------------------------------------

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
    return sp.MatrixSymbol(name, *dshape(shape)) if shape else sp.Symbol(name)


def axes_label(x: Node, axes: tuple) -> str:
    """How a reduction's axes read: "batch" for the batch axis, "j" for the last one."""
    return ",".join("batch" if x.shape[a] is None else "j" if a == x.ndim - 1 else f"axis{a}" for a in axes)


def _index(idx: tuple) -> str:
    return ", ".join(str(i) if isinstance(i, int) else ":" if i == (0, 0, 1) else
                     f"{i[0]}:{i[1]}" + (f":{i[2]}" if i[2] != 1 else "") for i in idx)


def _show_dot(n, a, b):
    return D.MatMul(D.Transpose(a) if n.attrs["ta"] else a, D.Transpose(b) if n.attrs["tb"] else b)


SHOW: dict[str, Callable] = {
    "dot": _show_dot,
    "transpose": lambda n, a: D.Transpose(a) if n.attrs["perm"] == (1, 0) else
    D.func("transpose", dshape(n.shape), a, sub=str(n.attrs["perm"])),
    "sum": lambda n, a: D.func("Σ", dshape(n.shape), a, sub=axes_label(n.inputs[0], n.attrs["axes"])),
    "max": lambda n, a: D.func("max", dshape(n.shape), a, sub=axes_label(n.inputs[0], n.attrs["axes"])),
    "size": lambda n, _: sp.Mul(*[B if n.inputs[0].shape[a] is None else n.inputs[0].shape[a]
                                  for a in n.attrs["axes"]]),
    "slice": lambda n, a: D.func("index", dshape(n.shape), a, sub=_index(n.attrs["index"])),
    "unslice": lambda n, g, _: D.func("unslice", dshape(n.shape), g, sub=_index(n.attrs["index"])),
    "reshape": lambda n, a: D.func("reshape", dshape(n.shape), a) if D.is_matrix(a) else a,
    "concat": lambda n, *xs: D.func("concat", dshape(n.shape), *xs),
    "onehot": lambda n, y: D.func("onehot", dshape(n.shape), y),
}
"""Display of structural ops: ``show(node, *input displays)``. A registered op's own
``OpDef.show(args, node)`` takes precedence; an op found in neither reads as ``op(args)``."""


def show_op(n: Node, args: list) -> sp.Basic:
    """The display expression of node ``n`` given the display forms of its inputs."""
    od = OPS.get(n.op)
    if od is not None and od.show is not None:
        return od.show(args, n)
    if "expr" in n.attrs:
        return translate(n.attrs["expr"], args, dshape(n.shape))
    if n.op in SHOW:
        return SHOW[n.op](n, *args)
    return D.func(n.op, dshape(n.shape), *[a for a in args if a is not None])


def translate(expr: sp.Expr, args: list, shape: tuple) -> sp.Basic:
    """Map an elementwise formula over x0..xn to a matrix display expression of ``shape``.

    Products of matrices become Hadamard products, quotients elementwise divisions,
    squares H⊙H, functions of matrices Func; parts that involve only scalars stay scalar.
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
            return D.MatAdd(*[fit(t) for t in terms])
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


# -- composites: softmax family read as one function ------------------------------------------

def _lse(n: Node):
    """logsumexp(X) as symbp.nn builds it: (X, axes, ids of its nodes) or None."""
    top = n.inputs[0] if n.op == "reshape" else n
    if top.op != "add" or len(top.inputs) != 2:
        return None
    lg, m = top.inputs
    if lg.op != "log" or lg.inputs[0].op != "sum":
        return None
    s = lg.inputs[0]
    e = s.inputs[0]
    if e.op != "exp" or e.inputs[0].op != "sub" or e.inputs[0].inputs[1] is not m:
        return None
    x = e.inputs[0].inputs[0]
    if m.op != "stop_gradient" or m.inputs[0].op != "max" or m.inputs[0].inputs[0] is not x:
        return None
    return x, s.attrs["axes"], {n.id, top.id, lg.id, s.id, e.id, e.inputs[0].id, m.id, m.inputs[0].id}


def _log_softmax(n: Node):
    if n.op != "sub" or len(n.inputs) != 2:
        return None
    found = _lse(n.inputs[1])
    return found and found[0] is n.inputs[0] and (found[0], found[1], found[2] | {n.id})


def _softmax(n: Node):
    if n.op != "div" or len(n.inputs) != 2 or n.inputs[1].op != "sum" or n.inputs[1].inputs[0] is not n.inputs[0]:
        return None
    e = n.inputs[0]
    if e.op != "exp" or e.inputs[0].op != "sub":
        return None
    x, m = e.inputs[0].inputs
    if m.op != "stop_gradient" or m.inputs[0].op != "max" or m.inputs[0].inputs[0] is not x:
        return None
    return x, n.inputs[1].attrs["axes"], {n.id, n.inputs[1].id, e.id, e.inputs[0].id, m.id, m.inputs[0].id}


def _cross_entropy(n: Node):
    """mean(−Σ_j onehot(y) ⊙ log_softmax(Z)) as symbp.nn builds it: (Z, onehot, size, ids)."""
    if n.op != "div" or len(n.inputs) != 2 or n.inputs[1].op != "size":
        return None
    t, size = n.inputs
    if t.op != "sum" or t.inputs[0].op != "neg" or t.inputs[0].inputs[0].op != "sum":
        return None
    mul = t.inputs[0].inputs[0].inputs[0]
    if mul.op != "mul" or len(mul.inputs) != 2 or mul.inputs[0].op != "onehot":
        return None
    found = _log_softmax(mul.inputs[1])
    if not found:
        return None
    return found[0], mul.inputs[0], size, found[2] | {n.id, t.id, t.inputs[0].id, t.inputs[0].inputs[0].id,
                                                        mul.id, size.id}


# -- the walk ---------------------------------------------------------------------------------

class _Builder:
    """Decides which nodes get an equation, names them and builds their display forms."""

    def __init__(self, d):
        self.d = d
        self.fwd = topo_order([d.loss, *d.outputs.values()])
        fwd_ids = {n.id for n in self.fwd}
        self.bwd = [n for n in topo_order(list(d.grads.values())) if n.id not in fwd_ids]
        self.is_fwd = fwd_ids
        self.order = self.fwd + self.bwd
        taken = {*d.inputs, *d.params, *d.outputs}
        self.loss = sp.Symbol("L" if "L" not in taken else "loss_")
        self.used = taken | {self.loss.name}
        self.counts: dict[str, int] = {}
        self.special: dict[int, tuple] = {}  # node id -> (display builder, referenced nodes)
        self._composites()
        self.args = {n.id: self._args(n) for n in self.order}
        self.refs = {i: list(dict.fromkeys(a for a in args if a is not None)) for i, args in self.args.items()}

    def _composites(self) -> None:
        for n in self.fwd:
            for name, match in (("log_softmax", _log_softmax), ("softmax", _softmax), ("logsumexp", _lse)):
                found = match(n)
                if found:
                    x, axes, _ = found
                    sub = axes_label(x, axes)
                    self.special[n.id] = (lambda a, n=n, nm=name, sub=sub: D.func(nm, dshape(n.shape), a, sub=sub),
                                          [x])
                    break
            self._cross_entropy_delta(n)

    def _cross_entropy_delta(self, n: Node) -> None:
        """δZ = (softmax(Z) − onehot(y)) · g / N where L = CE(Z, y) is all that reads Z."""
        found, cot = _cross_entropy(n), self.d.cotangents
        if not found or found[0].id not in cot or n.id not in cot:
            return
        z, onehot, size, inside = found
        users: dict[int, set] = {}
        for u in topo_order([self.d.loss]):
            for i in u.inputs:
                users.setdefault(i.id, set()).add(u.id)
        if any(not users.get(i, set()) <= inside for i in inside - {n.id} | {z.id}):
            return  # Z or a part of the loss is read elsewhere: the general form applies
        g = cot[n.id]
        seed = g.op == "const" and g.attrs.get("value") == 1.0
        sub = axes_label(z, (z.ndim - 1,))

        def build(zd, od, nd, gd=1):
            diff = D.MatAdd(D.func("softmax", dshape(z.shape), zd, sub=sub), D.MatMul(-1, od))
            return D.MatMul(gd / nd, diff)

        self.special[cot[z.id].id] = (build, [z, onehot, size] + ([] if seed else [g]))

    def _args(self, n: Node) -> list:
        """The nodes whose display forms ``n``'s display reads (None: read for shape only)."""
        if n.id in self.special:
            return [self.resolve(i) for i in self.special[n.id][1]]
        skip = SHAPE_ONLY.get(n.op, ())
        return [None if k in skip else self.resolve(i) for k, i in enumerate(n.inputs)]

    @staticmethod
    def resolve(n: Node) -> Node:
        while n.op in TRANSPARENT:
            n = n.inputs[0]
        return n

    def build(self) -> list[Equation]:
        d = self.d
        roots = [d.loss, *d.outputs.values(), *d.grads.values()]
        live, stack = set(), [self.resolve(r) for r in roots]
        while stack:
            n = stack.pop()
            if n.id not in live:
                live.add(n.id)
                stack.extend(self.refs[n.id])
        users: dict[int, int] = {}
        for n in self.order:
            if n.id in live:
                for r in self.refs[n.id]:
                    users[r.id] = users.get(r.id, 0) + 1
        can = {n.id for n in self.order if n.id in live and n.inputs and n.op not in TRANSPARENT | {"size"}}
        root_ids = {self.resolve(r).id for r in roots} & can
        shared = {i for i in can if users.get(i, 0) > 1}
        shared |= {r.id for n in self.bwd if n.id in live for r in self.refs[n.id] if r.id in self.is_fwd} & can
        mat = root_ids | shared
        # A δ is named after the tensor it is the gradient of, so that tensor gets an equation.
        owner: dict[int, Node] = {}
        for f in self.fwd:
            c = d.cotangents.get(f.id)
            if c is not None and f.id in can:
                owner[self.resolve(c).id] = f  # the latest wins: Z = X W + b, not X W
        mat |= {owner[c].id for c in mat if c in owner and c not in self.is_fwd and owner[c].id in can}

        trained = set()  # nodes that depend on a parameter
        for n in self.order:
            if n.op == "param" or any(i.id in trained for i in n.inputs):
                trained.add(n.id)
        self.names: dict[int, sp.Basic] = {}
        disp: dict[int, sp.Basic] = {}
        inline: dict[int, sp.Basic] = {}
        for n in self.order:
            if n.id not in live:
                continue
            if not n.inputs:
                disp[n.id] = (symbol(n.name, n.shape) if n.op in ("input", "param") else
                              number(n.attrs.get("value", 0.0)))
                continue
            args = [None if a is None else disp[a.id] for a in self.args[n.id]]
            e = self.special[n.id][0](*args) if n.id in self.special else show_op(n, args)
            inline[n.id] = e
            width = len(D.TextPrinter().doprint(e))
            if n.id not in mat and n.id in can and width > MAX_INLINE:
                mat.add(n.id)
            elif n.id in mat - root_ids and (isinstance(e, (sp.Symbol, sp.MatrixSymbol, sp.Number)) or
                                             n.id in shared and width <= MAX_DATA and n.id not in trained):
                mat.discard(n.id)  # e.g. onehot(y): reads as well as a name, and costs nothing
            if n.id in mat:
                self.names[n.id] = self._name(n, owner.get(n.id), disp)
            disp[n.id] = self.names.get(n.id, e)

        entries: list[Equation] = []
        grads = {g.id: name for name, g in d.grads.items()}
        fwd_eqs = [n for n in self.fwd if n.id in mat]
        bwd_eqs = [n for n in self.bwd if n.id in mat and n.id not in grads]
        for section, nodes in (("forward", fwd_eqs), ("backward", bwd_eqs)):
            for n in nodes:
                entries.append(Equation(len(entries) + 1, self.names[n.id], inline[n.id], n.id,
                                        self._folded(n, mat), section))
        for pname, g in d.grads.items():
            t = self.resolve(g)
            rhs = inline[t.id] if t.id in inline and (t.id == g.id or t.id not in mat) else disp[t.id]
            lhs = D.grad(self.loss, symbol(pname, d.params[pname].shape))
            entries.append(Equation(len(entries) + 1, lhs, rhs, g.id, self._folded(g, mat), "gradients"))
        return entries

    def _name(self, n: Node, owner: Node | None, disp: dict) -> sp.Basic:
        """The symbol of a node with its own equation: L, an output or layer name, δX, Z₁..."""
        d = self.d
        params = {g.id: p for p, g in d.grads.items()}
        if n.id in params:
            return D.grad(self.loss, symbol(params[n.id], d.params[params[n.id]].shape))
        if n is d.loss:
            return self.loss
        if n.id not in self.is_fwd:
            if owner is not None and owner.id in self.names:
                return D.delta(self.names[owner.id])
            return symbol(self._fresh("G"), n.shape)
        outs = [k for k, v in d.outputs.items() if v is n]
        if outs:
            return symbol(outs[0], n.shape)
        if n.label and not n.label.startswith("d") and n.label not in self.used:
            self.used.add(n.label)
            return symbol(n.label, n.shape)
        affine = n.op in ("add", "sub") and any(self.resolve(i).op == "dot" for i in n.inputs)
        return symbol(self._fresh("Z" if affine else ROLE.get(n.op, "A")), n.shape)

    def _fresh(self, letter: str) -> str:
        while True:
            self.counts[letter] = k = self.counts.get(letter, 0) + 1
            if f"{letter}_{k}" not in self.used:
                self.used.add(f"{letter}_{k}")
                return f"{letter}_{k}"

    def _folded(self, n: Node, mat: set) -> tuple:
        """Ids of the nodes an equation computes: ``n`` and what was inlined into it."""
        side = n.id in self.is_fwd
        ids, stack = set(), [n]
        while stack:
            m = stack.pop()
            if m.id not in ids:
                ids.add(m.id)
                stack.extend(i for i in m.inputs if i.inputs and i.id not in mat and (i.id in self.is_fwd) == side)
        return tuple(sorted(ids))


def equations(d) -> Equations:
    """The derived equations of a derivation, numbered: forward pass, δ terms, gradients.

    Args:
        d: a ``symbp.Derivation`` (from ``sb.derive``).
    Returns:
        An Equations object: ``print`` it, ``.latex()``, ``.entries``.
    """
    return Equations(d.name, _Builder(d).build())
