"""Pictures of the forward and backward graphs: Graphviz DOT text, SVG through ``dot``.

A small writer of our own rather than networkx + pydot: it is ~60 lines, has no dependency,
keeps the output deterministic (nodes in creation order) and quotes every label, so no
name a user picks can break the DOT or inject attributes. Rendering needs the Graphviz
``dot`` program; without it, ``render_svg`` raises a SymbpError that says how to get it.
"""

from __future__ import annotations

import shutil
import subprocess

from symbp.ir import Node, fmt_shape, topo_order

STYLE = {
    "input": 'shape=ellipse, style=filled, fillcolor="#dbeafe"',
    "param": 'shape=box, style="filled,rounded", fillcolor="#fde68a"',
    "forward": 'shape=box, style=filled, fillcolor="#f3f4f6"',
    "backward": 'shape=box, style=filled, fillcolor="#fee2e2", color="#b91c1c"',
    "loss": 'shape=doubleoctagon, style=filled, fillcolor="#bbf7d0"',
    "output": 'shape=box, style="filled,bold", fillcolor="#e9d5ff"',
    "grad": 'shape=box, style="filled,bold,rounded", fillcolor="#fca5a5", color="#b91c1c"',
}
# ops whose argument order matters (x0, x1 in an elementwise formula)
ORDERED = frozenset({"dot", "sub", "div", "concat", "ew", "power", "where", "greater", "unslice",
                     "broadcast_like"})


def quote(text: str) -> str:
    """A DOT double-quoted string for ``text`` (newlines kept as line breaks)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "")
    return '"' + text.replace("\n", "\\n") + '"'


def _label(n: Node, role: str, title: str | None) -> str:
    if title:
        head = title
    elif n.op in ("input", "param", "const") or "expr" not in n.attrs:
        head = n.name or n.op
        if n.op == "const":
            head = f"const {n.attrs.get('value', '')}"
    else:
        head = f"{n.op}: {n.attrs['expr']}" if n.op == "ew" else n.op
    lines = [head, fmt_shape(n.shape) + (" int64" if n.dtype == "int64" else "")]
    if n.label and not n.name and role != "grad":
        lines.append(f"[{n.label}]")
    return "\n".join(lines)


def to_dot(derivation, backward: bool = False) -> str:
    """The graph of ``derivation`` in Graphviz DOT.

    Args:
        derivation: from ``sb.derive``.
        backward: include the backward graph (the nodes computing the gradients, in red).
    Returns:
        DOT source text, deterministic for a given model.
    """
    d = derivation
    fwd_roots = [d.loss, *d.outputs.values()]
    forward = {n.id for n in topo_order(fwd_roots)}
    nodes = topo_order(fwd_roots + (list(d.grads.values()) if backward else []))
    titles = {d.loss.id: "loss"}
    roles = {d.loss.id: "loss"}
    for k, o in d.outputs.items():
        titles.setdefault(o.id, f"output {k}")
        roles.setdefault(o.id, "output")
    if backward:
        for k, g in d.grads.items():
            if g.id not in forward:
                titles[g.id], roles[g.id] = f"d loss / d {k}", "grad"
    lines = [f"digraph {quote(d.name + (' (forward and backward)' if backward else ' (forward)'))} {{",
             "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [color="#6b7280", arrowsize=0.6];']
    num = {n.id: k for k, n in enumerate(nodes)}  # ids are process-global; positions are not
    for n in nodes:
        role = roles.get(n.id) or (n.op if n.op in ("input", "param") else
                                   "forward" if n.id in forward else "backward")
        lines.append(f"  n{num[n.id]} [label={quote(_label(n, role, titles.get(n.id)))}, {STYLE[role]}];")
    for n in nodes:
        for pos, i in enumerate(n.inputs):
            attrs = [] if n.id in forward else ['color="#b91c1c"']
            if len(n.inputs) > 1 and n.op in ORDERED:  # say which argument an edge feeds
                attrs.append(f'headlabel="{pos}", labelfontsize=8')
            lines.append(f"  n{num[i.id]} -> n{num[n.id]}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def have_dot() -> bool:
    """Whether the Graphviz ``dot`` program is on the PATH."""
    return shutil.which("dot") is not None


def render_svg(dot_text: str) -> str:
    """Render DOT text to SVG with Graphviz's ``dot`` program.

    Raises:
        SymbpError: ``dot`` is not installed (the message says how to install it).
    """
    from symbp.ir import SymbpError

    exe = shutil.which("dot")
    if exe is None:
        raise SymbpError("rendering SVG needs the Graphviz 'dot' program, which is not installed "
                         "(apt-get install graphviz, brew install graphviz, or conda install graphviz); "
                         "without it, write DOT text (--format dot) and render it elsewhere")
    done = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SymbpError(f"Graphviz dot failed: {done.stderr.strip()}")
    return done.stdout
