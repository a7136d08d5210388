"""Equations of a recurrence: the cell at step t, the δ-recurrence back through time, each
parameter's gradient as a sum over t, and where truncation cuts that sum.

The cell and its backward are small closed graphs (``symbp.ops.scan.Cell``), so they print as a
handful of equations whatever T is. Elementwise formulas print through SymPy (text and
LaTeX); structural ops through the small table below. ``symbp.show.equations`` calls
``scan_equations(node)`` for each scan node of a derivation.
"""

from __future__ import annotations

import re

import sympy as sp

from symbp.ir import Node, topo_order
from symbp.notation import format_index
from symbp.ops.scalar import symbols

TRANSPARENT = {"reshape", "expand_dims", "broadcast_like", "stop_gradient"}
_ATOM = re.compile(r"^[\w{}^\-δΔ'\\]+$")


def _paren(s: str) -> str:
    return s if _ATOM.match(s) else f"({s})"


def _index(n: Node) -> str:
    """The index of a slice/unslice node as the user writes it: ``:`` for the batch axis too."""
    return format_index(n.attrs["index"])


class _Printer:
    """Prints a closed cell graph: names for materialised nodes, the rest inlined."""

    def __init__(self, names: dict[int, tuple[str, str]], fresh: str):
        self.names = dict(names)  # node id -> (text, latex)
        self.fresh, self.count = fresh, 0
        self.lines: list[tuple[str, str]] = []

    def show(self, roots: list[Node], named: dict[int, tuple[str, str]], keep: set[int]) -> None:
        """Emit an equation for each root (named by ``named``) and for nodes in ``keep``."""
        order = topo_order(roots)
        users: dict[int, int] = {}
        for n in order:
            for i in n.inputs:
                users[i.id] = users.get(i.id, 0) + 1
        disp: dict[int, tuple[str, str]] = {}
        for n in order:
            if n.id in self.names:
                disp[n.id] = self.names[n.id]
                continue
            e = self._op(n, [disp[i.id] for i in n.inputs])
            own = n.id in named or n.id in keep or (users.get(n.id, 0) > 1 and n.inputs and n.op not in TRANSPARENT)
            if own and n.op != "const":
                if n.id not in named:
                    self.count += 1
                    named[n.id] = (f"{self.fresh}{self.count}", f"{self.fresh}_{{{self.count}}}")
                self.lines.append((f"{named[n.id][0]} = {e[0]}", f"{named[n.id][1]} = {e[1]}"))
                e = named[n.id]
            disp[n.id] = self.names[n.id] = e
        for r in roots:  # roots that are inputs or constants still get an equation
            if r.id in named and not any(line[0].startswith(named[r.id][0] + " =") for line in self.lines):
                self.lines.append((f"{named[r.id][0]} = {disp[r.id][0]}", f"{named[r.id][1]} = {disp[r.id][1]}"))

    def _op(self, n: Node, a: list[tuple[str, str]]) -> tuple[str, str]:
        if "expr" in n.attrs:
            xs = symbols(len(a))
            expr = n.attrs["expr"].xreplace({x: sp.Symbol(f"_v{k}") for k, x in enumerate(xs)})
            text = sp.sstr(expr)
            for k in sorted(range(len(a)), reverse=True):  # _v10 before _v1
                arg = a[k][0]
                # A sum needs no parentheses around its terms; a product or function of a sum does.
                if " " in arg and not (expr.is_Add or isinstance(expr, sp.Function) and len(expr.args) == 1):
                    arg = f"({arg})"
                text = text.replace(f"_v{k}", arg)
            # SymPy takes each argument's LaTeX as an atom: parenthesise compound ones as the
            # text does, or (δh + δy)(1 - h²) would print as δh + δy (1 - h²).
            bare = expr.is_Add or isinstance(expr, sp.Function) and len(expr.args) == 1
            names = {sp.Symbol(f"_v{k}"): a[k][1] if bare or not re.search(r"[ +\-]", a[k][1].replace("_{t-1}", ""))
                     else f"\\left({a[k][1]}\\right)" for k in range(len(a))}
            latex = sp.latex(expr, symbol_names=names)
            return text, latex
        if n.op == "const":
            v = n.attrs["value"]
            s = str(int(v)) if float(v).is_integer() else repr(v)
            return s, s
        if n.op in TRANSPARENT:
            return a[0]
        if n.op == "dot":
            ta, tb = n.attrs["ta"], n.attrs["tb"]
            x = _paren(a[0][0]) + ("ᵀ" if ta else "")
            y = _paren(a[1][0]) + ("ᵀ" if tb else "")
            lx = a[0][1] + ("^{\\top}" if ta else "")
            ly = a[1][1] + ("^{\\top}" if tb else "")
            return f"{x}·{y}", f"{lx} {ly}"
        if n.op == "transpose":
            return _paren(a[0][0]) + "ᵀ", a[0][1] + "^{\\top}"
        if n.op == "slice":
            ix = _index(n)
            # the base in braces: a_{1}_{[0:16]} is a LaTeX error ("Double subscript")
            return f"{_paren(a[0][0])}[{ix}]", f"{{{a[0][1]}}}_{{[{ix}]}}"
        if n.op == "unslice":
            ix = _index(n)
            return f"pad({a[0][0]} into [{ix}])", f"\\operatorname{{pad}}_{{[{ix}]}}({a[0][1]})"
        if n.op == "concat":
            return "[" + ", ".join(s for s, _ in a) + "]", "\\left[" + ", ".join(s for _, s in a) + "\\right]"
        if n.op == "sum":
            ax = ",".join(map(str, n.attrs["axes"]))
            return f"sum_axis{ax}({a[0][0]})", f"\\sum_{{\\text{{axis }}{ax}}} {a[0][1]}"
        args_t = ", ".join(s for s, _ in a)
        return f"{n.op}({args_t})", f"\\operatorname{{{n.op}}}({', '.join(s for _, s in a)})"


def _reads_x(n: Node) -> bool:
    return any(v.attrs.get("role", ("",))[0] == "x" for v in topo_order([n]))


def _outer_name(n: Node) -> tuple[str, str]:
    """How a tensor from outside the step reads in a hoisted value: its name (a weight)."""
    s = n.name or n.label or n.op
    return s, s.replace("_", r"\_")


def _carry_names(n: int) -> list[str]:
    return ["h"] if n == 1 else ["h", "c"] if n == 2 else [f"h{k + 1}" for k in range(n)]


def scan_equations(scan: Node) -> list[tuple[str, str, str]]:
    """The equations of one scan node, as (section, text, latex) triples.

    Args:
        scan: a node of op "scan" (e.g. ``y.inputs[0]`` for an output ``y`` of ``sb.scan``).
    Returns:
        Sections "forward" (the cell at step t), "backward" (the δ-recurrence, t = T-1..0),
        "gradients" (sums over t) and "truncation" (only with truncate=(k1, k2)).
    """
    cell, T = scan.attrs["cell"], scan.attrs["length"]
    nc, nx = len(cell.carry_in), len(cell.xs_in)
    hs = _carry_names(nc)
    # x_t: the user's per-step inputs, u_t: values hoisted out of the loop (symbp.ops.hoist)
    hoisted = dict(cell.hoisted)
    user = {p.id: p for v in (*cell.xs_in, *hoisted.values()) for p in topo_order([v])
            if p.attrs.get("role", ("",))[0] == "x" and p not in hoisted}
    n_user = max([p.attrs["role"][1] + 1 for p in user.values()] + [0])
    names = {p.id: (f"x{k + 1 if n_user > 1 else ''}_t", f"x{k + 1 if n_user > 1 else ''}_{{t}}")
             for p in user.values() for k in [p.attrs["role"][1]]}
    us = {p.id: "u" if len(hoisted) == 1 else f"u{k + 1}" for k, p in enumerate(hoisted)}
    names.update({i: (f"{u}_t", f"{u}_{{t}}") for i, u in us.items()})
    before: list[tuple[str, str, str]] = []
    for p, v in hoisted.items():
        pre = _Printer(names, "v")
        pre.names.update({n.id: _outer_name(n) for n in topo_order([v]) if not _reads_x(n)})
        pre.show([v], {v.id: names[p.id]}, set())
        before += [("forward", t + "   (before the loop, for all t at once)", latex) for t, latex in pre.lines]
    out: list[tuple[str, str, str]] = []
    outer = scan.inputs[nx + nc:]
    cap = [(o.name or o.label or f"C{k + 1}") for k, o in enumerate(outer)]
    names.update({p.id: (f"{h}_{{t-1}}", f"{h}_{{t-1}}") for p, h in zip(cell.carry_in, hs)})
    names.update({p.id: (c, c.replace("_", r"\_")) for p, c in zip(cell.captured, cap)})
    fwd = _Printer(names, "a")
    named = {c.id: (f"{h}_t", f"{h}_{{t}}") for c, h in zip(cell.carry_out, hs)}
    ys = ["y"] if len(cell.ys) == 1 else [f"y{k + 1}" for k in range(len(cell.ys))]
    for y, name in zip(cell.ys, ys):
        named.setdefault(y.id, (f"{name}_t", f"{name}_{{t}}"))
    fwd.show([*cell.carry_out, *cell.ys], named, {r.id for r in cell.residuals})
    for y, name in zip(cell.ys, ys):  # y_t = h_t: say so
        if named[y.id][0] != f"{name}_t":
            out.append(("forward", f"{name}_t = {named[y.id][0]}", f"{name}_{{t}} = {named[y.id][1]}"))
    out[:0] = [*before, *(("forward", t, latex) for t, latex in fwd.lines)]
    # Backward: the saved placeholders read as the forward values they stand for.
    bnames = {s.id: fwd.names[r.id] for s, r in zip(cell.saved, cell.residuals)}
    bnames.update({p.id: names[p.id] for p in (*cell.xs_in, *cell.captured)})
    bnames.update({p.id: (f"δ{h}_t", f"\\delta {h}_{{t}}") for p, h in zip(cell.d_carry_out, hs)})
    bnames.update({p.id: (f"δ{y}_t", f"\\delta {y}_{{t}}") for p, y in zip(cell.d_ys, ys)})
    bwd = _Printer(bnames, "g")
    bnamed = {r.id: (f"δ{h}_{{t-1}}", f"\\delta {h}_{{t-1}}") for r, h in zip(cell.d_carry_in, hs) if r is not None}
    grads = [(r, c) for r, c in zip(cell.d_captured, cap) if r is not None and (outer[cap.index(c)].op == "param")]
    for r, c in grads:
        bnamed.setdefault(r.id, (f"Δ{c}_t", f"\\Delta {c.replace('_', chr(92) + '_')}_{{t}}"))
    bwd.show([r for r in cell.d_carry_in if r is not None] + [r for r, _ in grads], bnamed, set())
    lead = [("backward", f"δ{h}_t = ∂L/∂{h}_t through the steps after t (at t = {T - 1}: ∂L/∂{h} of the final carry); "
                         f"δ{y}_t = ∂L/∂{y}_t, the step's output error",
             f"\\delta {h}_{{t}} = \\partial L / \\partial {h}_{{t}}") for h, y in zip(hs[:1], ys[:1] or ["y"])]
    out += lead + [("backward", t, latex) for t, latex in bwd.lines]
    for r, c in grads:
        ln = c.replace("_", r"\_")
        out.append(("gradients", f"∂L/∂{c} = Σ_t=0..{T - 1} {bnamed[r.id][0]}",
                    f"\\frac{{\\partial L}}{{\\partial {ln}}} = \\sum_{{t=0}}^{{{T - 1}}} {bnamed[r.id][1]}"))
    for p, v in hoisted.items():
        u, w = names[p.id][0].removesuffix("_t"), ", ".join(_outer_name(n)[0] for n in topo_order([v])
                                                            if n.op == "param")
        out.append(("gradients", f"δ{u}_t = ∂L/∂{u}_t is kept for every t; after the loop, ∂L/∂({w}) from it in one "
                    f"product over all T·B rows", f"\\delta {u}_{{t}} = \\partial L / \\partial {u}_{{t}}"))
    if scan.attrs["truncate"] is not None:
        k1, k2 = scan.attrs["truncate"]
        back = max(k2 - k1, 0)  # symbp.autodiff.bptt.window_start
        out.append(("truncation", f"every {k1} steps, back {k2} steps: the error of step s in chunk "
                    f"[{k1}j, e_j) with e_j = min({k1}(j+1), {T}) reaches steps "
                    f"t ≥ max({k1}j - {back}, e_j - {k2}, 0) only; "
                    f"δ{hs[0]} restarts from 0 at each window's end, so each sum over t is cut there",
                    f"\\text{{truncated BPTT}}({k1}, {k2}): \\; t \\ge \\max({k1}j - {back}, e_j - {k2}, 0), "
                    f"\\; e_j = \\min({k1}(j+1), {T})"))
    return out


def format_scan_equations(scan: Node) -> str:
    """The text of ``scan_equations(scan)``, one section heading each."""
    lines, section = [], None
    for sec, text, _ in scan_equations(scan):
        if sec != section:
            lines.append(f"[{scan.label or 'scan'}: {sec}]")
            section = sec
        lines.append("  " + text)
    return "\n".join(lines)


def recurrence_equations(d) -> list[tuple[str, str, str, str]]:
    """The equations of every scan in a derivation, as (loop label, section, text, latex).

    Args:
        d: a ``symbp.Derivation``.
    Returns:
        One block per scan node, in graph order (empty for a model without recurrences).
    """
    roots = d.forward_roots()
    return [(n.label or "scan", *eq) for n in topo_order(roots) if n.op == "scan" for eq in scan_equations(n)]
