"""Pictures of the forward and backward graphs: Graphviz DOT, and SVG through ``dot``.

The DOT is built with the ``graphviz`` package (pure Python): it writes and quotes the DOT,
runs the ``dot`` program to render it and displays in Jupyter. Output is deterministic
(nodes in creation order, numbered by position). Labels are escaped before they reach it
(backslashes doubled, newlines as ``\\n``; it escapes the quotes), so no name a user picks can
break the DOT or inject attributes. Rendering needs the Graphviz ``dot`` program; without
it, ``render_svg`` raises a SymbpError that says how to get it.
"""

from __future__ import annotations

import shutil
import subprocess

import graphviz

from symbp.ir import Node, SymbpError, fmt_shape, topo_order

STYLE = {
    "input": {"shape": "ellipse", "style": "filled", "fillcolor": "#dbeafe"},
    "param": {"shape": "box", "style": "filled,rounded", "fillcolor": "#fde68a"},
    "forward": {"shape": "box", "style": "filled", "fillcolor": "#f3f4f6"},
    "backward": {"shape": "box", "style": "filled", "fillcolor": "#fee2e2", "color": "#b91c1c"},
    "loss": {"shape": "doubleoctagon", "style": "filled", "fillcolor": "#bbf7d0"},
    "output": {"shape": "box", "style": "filled,bold", "fillcolor": "#e9d5ff"},
    "grad": {"shape": "box", "style": "filled,bold,rounded", "fillcolor": "#fca5a5", "color": "#b91c1c"},
}
# ops whose argument order matters (x0, x1 in an elementwise formula)
ORDERED = frozenset({"dot", "sub", "div", "concat", "ew", "power", "where", "greater", "unslice",
                     "broadcast_like"})
NOT_INSTALLED = ("rendering SVG needs the Graphviz 'dot' program, which is not installed "
                 "(apt-get install graphviz, brew install graphviz, or conda install graphviz); "
                 "without it, write DOT text (--format dot) and render it elsewhere")


def escape(text: str) -> str:
    """``text`` as the inside of a DOT string: backslashes doubled, line breaks as ``\\n``.

    The ``graphviz`` package passes backslashes through (they are DOT's escapes), so a user's
    backslash is doubled here; it escapes the double quotes itself.
    """
    return text.replace("\\", "\\\\").replace("\r", "").replace("\n", "\\n")


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


def digraph(derivation, backward: bool = False) -> graphviz.Digraph:
    """The graph of ``derivation`` as a ``graphviz.Digraph`` (renders itself in Jupyter).

    Args:
        derivation: from ``sb.derive``.
        backward: include the backward graph (the nodes computing the gradients, in red).
    Returns:
        The digraph; ``.source`` is its DOT text, deterministic for a given model.
    """
    d = derivation
    fwd_roots = d.forward_roots()
    forward = {n.id for n in topo_order(fwd_roots)}
    nodes = topo_order(fwd_roots + (list(d.grads.values()) if backward else []))
    titles = {} if d.loss is None else {d.loss.id: "loss"}
    roles = dict(titles)
    for k, o in d.outputs.items():
        titles.setdefault(o.id, f"output {k}")
        roles.setdefault(o.id, "output")
    if backward:
        for k, g in d.grads.items():
            if g.id not in forward:
                titles[g.id], roles[g.id] = f"d loss / d {k}", "grad"
    g = graphviz.Digraph(escape(d.name + (" (forward and backward)" if backward else " (forward)")),
                         graph_attr={"rankdir": "TB"}, node_attr={"fontname": "Helvetica", "fontsize": "10"},
                         edge_attr={"color": "#6b7280", "arrowsize": "0.6"})
    num = {n.id: k for k, n in enumerate(nodes)}  # ids are process-global; positions are not
    for n in nodes:
        role = roles.get(n.id) or (n.op if n.op in ("input", "param") else
                                   "forward" if n.id in forward else "backward")
        g.node(f"n{num[n.id]}", label=escape(_label(n, role, titles.get(n.id))), **STYLE[role])
    for n in nodes:
        for pos, i in enumerate(n.inputs):
            attrs = {} if n.id in forward else {"color": "#b91c1c"}
            if len(n.inputs) > 1 and n.op in ORDERED:  # say which argument an edge feeds
                attrs.update(headlabel=str(pos), labelfontsize="8")
            g.edge(f"n{num[i.id]}", f"n{num[n.id]}", **attrs)
    return g


def to_dot(derivation, backward: bool = False) -> str:
    """The graph of ``derivation`` in Graphviz DOT (see ``digraph``)."""
    return digraph(derivation, backward).source


def have_dot() -> bool:
    """Whether the Graphviz ``dot`` program is on the PATH."""
    return shutil.which("dot") is not None


def render_svg(dot_text: str) -> str:
    """Render DOT text to SVG with Graphviz's ``dot`` program.

    Raises:
        SymbpError: ``dot`` is not installed (the message says how to install it), or failed.
    """
    try:
        return graphviz.Source(dot_text).pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        raise SymbpError(NOT_INSTALLED) from None
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr or e)
        raise SymbpError(f"Graphviz dot failed: {err.strip()}") from None
