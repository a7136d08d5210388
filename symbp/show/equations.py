"""Readable derived equations: the forward pass, the δ terms and each parameter's gradient.

The derivation's graph is turned into numbered equations in matrix form. A node gets its
own equation when it is a result (loss, output, gradient), is read more than once, is a
forward value the backward pass reads, is the tensor a named δ belongs to, or would make
its user's formula too long; everything else is inlined into its single user, the way the
fusion pass folds elementwise chains. Elementwise formulas (SymPy over x0..xn) are mapped
to matrix display expressions: products of tensors become Hadamard products. The printing
itself is SymPy's printers (symbp.show.printers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import sympy as sp

from symbp import notation as N
from symbp.ir import Node, topo_order
from symbp.notation import axes_label, dshape, symbol
from symbp.ops.elementwise import number
from symbp.show.printers import TexPrinter, TextPrinter
from symbp.show.reading import COMPOSITES, match_cross_entropy, show_op

TRANSPARENT = {"stop_gradient", "expand_dims", "broadcast_like"}
"""Ops that leave values as they are (up to broadcasting): shown as their input."""

SHAPE_ONLY = {"size": (0,)}
"""Inputs read only for their shape, which equations do not mention."""

ROLE = {"dot": "Z", "exp": "E", "sum": "S", "max": "M", "tanh": "H", "sigmoid": "H", "relu": "H", "elu": "H",
        "leaky_relu": "H", "softplus": "H", "gelu": "H", "swish": "H"}
"""The letter of an unnamed forward tensor, by op (affine results are Z too)."""

MAX_INLINE = 56  # characters: a longer inlined formula gets its own equation instead
MAX_DATA = 16  # a short formula of data alone (no parameter) is inlined wherever it is read


@dataclass(frozen=True)
class Equation:
    """One numbered equation.

    Attributes:
        number: its number, from 1.
        lhs, rhs: SymPy display expressions (see symbp.notation).
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
        return f"{TextPrinter().doprint(self.lhs)} = {TextPrinter().doprint(self.rhs)}"

    def latex(self) -> str:
        return f"{TexPrinter().doprint(self.lhs)} &= {TexPrinter().doprint(self.rhs)}"


class Equations:
    """A model's derived equations: ``print`` it, or ``.latex()``; Jupyter renders it."""

    def __init__(self, name: str, entries: list[Equation], recurrences: list | None = None):
        self.name = name
        self.entries = entries
        # (loop, section, text, latex) of each sb.scan: its cell at step t and the δ-recurrence
        self.recurrences = recurrences or []
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
            lhs = [TextPrinter().doprint(e.lhs) for e in rows]
            width, nw = max(map(len, lhs)), len(str(self.entries[-1].number)) + 2
            for e, left in zip(rows, lhs):
                lines.append(f"  {f'({e.number})':>{nw}}  {left:<{width}} = {TextPrinter().doprint(e.rhs)}")
        heading = None
        for loop, section, text, _ in self.recurrences:
            if (loop, section) != heading:
                lines.append(f"recurrence {loop!r}, {section} (rolled loop: derived once, run for every t)")
                heading = (loop, section)
            lines.append(f"    {text}")
        return "\n".join(lines)

    def latex(self) -> str:
        """The equations as a LaTeX ``align*`` environment, numbered with ``\\tag``: it compiles in a
        document with ``\\usepackage{amsmath}`` and nothing else (tests/test_equations.py runs pdflatex)."""
        rows = [f"{e.latex()} \\tag{{{e.number}}}" for e in self.entries]
        rows += [f"&{tex} \\notag" for _, _, _, tex in self.recurrences]
        return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"

    def _repr_latex_(self) -> str:
        # Notebook renderers (MathJax, KaTeX) want math delimiters and allow no \tag inside
        # `aligned`, so the numbers go in a column of their own.
        rows = [f"{e.latex()} && ({e.number})" for e in self.entries]
        rows += [f"&{tex} &&" for _, _, _, tex in self.recurrences]
        return "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"

    def __str__(self) -> str:
        return self.text()

    __repr__ = __str__

    def __len__(self) -> int:
        return len(self.entries)


# -- the walk ---------------------------------------------------------------------------------

class _Builder:
    """Decides which nodes get an equation, names them and builds their display forms."""

    def __init__(self, d):
        self.d = d
        self.fwd = topo_order(d.forward_roots())
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
            for name, match in COMPOSITES:
                found = match(n)
                if found:
                    x, axes, _ = found
                    self.special[n.id] = (partial(N.func, name, dshape(n.shape), sub=axes_label(x, axes)), [x])
                    break
            self._cross_entropy_delta(n)

    def _cross_entropy_delta(self, n: Node) -> None:
        """δZ = (softmax(Z) − onehot(y)) · g / N where L = CE(Z, y) is all that reads Z."""
        found, cot = match_cross_entropy(n), self.d.cotangents
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
            diff = N.MatAdd(N.func("softmax", dshape(z.shape), zd, sub=sub), N.MatMul(-1, od))
            return N.MatMul(gd / nd, diff)

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
        roots = [*d.forward_roots(), *d.grads.values()]
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
                              number(n.attrs["value"]) if n.op == "const" else show_op(n, []))
                continue
            args = [None if a is None else disp[a.id] for a in self.args[n.id]]
            e = self.special[n.id][0](*args) if n.id in self.special else show_op(n, args)
            inline[n.id] = e
            width = len(TextPrinter().doprint(e))
            if n.id not in mat and n.id in can and width > MAX_INLINE:
                mat.add(n.id)
            elif n.id in mat - root_ids and (isinstance(e, (sp.Symbol, sp.MatrixSymbol, sp.Number)) or
                                             n.id in shared and width <= MAX_DATA and n.id not in trained):
                mat.discard(n.id)  # e.g. onehot(y): reads as well as a name, and costs nothing
            if n.id in mat:
                self.names[n.id] = self._name(n, owner.get(n.id), e)
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
            lhs = N.grad(self.loss, symbol(pname, d.params[pname].shape))
            entries.append(Equation(len(entries) + 1, lhs, rhs, g.id, self._folded(g, mat), "gradients"))
        return entries

    def _name(self, n: Node, owner: Node | None, e: sp.Basic) -> sp.Basic:
        """The symbol of a node with its own equation: L, an output or layer name, δX, Z₁..."""
        d = self.d
        params = {g.id: p for p, g in d.grads.items()}
        if n.id in params:
            return N.grad(self.loss, symbol(params[n.id], d.params[params[n.id]].shape))
        if n is d.loss:
            return self.loss
        if n.id not in self.is_fwd:
            if owner is not None and owner.id in self.names:
                return N.delta(self.names[owner.id])
            return symbol(self._fresh("G"), n.shape)
        outs = [k for k, v in d.outputs.items() if v is n]
        if outs:
            return symbol(outs[0], n.shape)
        if n.label and n.label not in self.used:  # a layer's name (forward nodes only reach here)
            self.used.add(n.label)
            return symbol(n.label, n.shape)
        affine = _affine(e) or n.id not in self.special and n.op in ("add", "sub") and any(
            self.resolve(i).op == "dot" for i in n.inputs)
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


def _affine(e: sp.Basic) -> bool:
    """A matrix product, plus or minus other terms: X W + b."""
    terms = e.args if isinstance(e, N.MatAdd) else (e,)
    return any(isinstance(t, N.MatMul) and sum(map(N.is_matrix, t.args)) > 1 for t in terms)


def equations(d) -> Equations:
    """The derived equations of a derivation, numbered: forward pass, δ terms, gradients.

    Args:
        d: a ``symbp.Derivation`` (from ``sb.derive``).
    Returns:
        An Equations object: ``print`` it, ``.latex()``, ``.entries``.
    """
    from symbp.show.recurrences import recurrence_equations

    return Equations(d.name, _Builder(d).build(), recurrence_equations(d))
