"""Graph rewrites between derivation and scheduling: shared-subexpression removal and
elementwise fusion.

Both are pure: they return new nodes and leave the derivation (which the equations show)
untouched.
"""

from __future__ import annotations

import sympy as sp

from symbp.ir import Node, topo_order, users_of
from symbp.ops import elementwise as E
from symbp.ops import scalar as S

# Bounds on one fused kernel: past them fusing saves nothing and SymPy work grows (a weight
# shared by thousands of steps would otherwise become one Add of thousands of terms).
MAX_INPUTS = 12
MAX_OPS = 60


def optimise(roots: list[Node]) -> list[Node]:
    """Return ``roots`` rebuilt with duplicates merged and elementwise chains fused."""
    return fuse(dedupe(roots))


def _rebuild(n: Node, inputs: list[Node], attrs: dict | None = None) -> Node:
    m = Node(n.op, inputs, n.shape, n.dtype, n.attrs if attrs is None else attrs, n.name, n.label)
    m.origin = n.origin
    return m


def dedupe(roots: list[Node]) -> list[Node]:
    """Merge nodes that compute the same thing from the same inputs."""
    new: dict[int, Node] = {}
    seen: dict[tuple, Node] = {}
    for n in topo_order(roots):
        if not n.inputs:
            new[n.id] = n
            continue
        inputs = [new[i.id] for i in n.inputs]
        probe = _rebuild(n, inputs)
        key = probe.key()
        if key in seen:
            new[n.id] = seen[key]
            seen[key].origin += n.origin
        else:
            seen[key] = new[n.id] = probe
    return [new[r.id] for r in roots]


def fuse(roots: list[Node]) -> list[Node]:
    """Fold an elementwise node into its only user when that user is elementwise too.

    The fused node's formula is the user's with the producer's formula substituted, so a
    chain like tanh(x @ W + b) becomes one kernel. Nodes read by several users, or that are
    results (roots), stay materialised: recomputing them would cost more than storing.
    """
    order = topo_order(roots)
    users = users_of(order)
    root_ids = {r.id for r in roots}

    def inlinable(p: Node, user: Node, n_inputs: int) -> bool:
        # ask the rebuilt producer, not the original: fusing can simplify a formula to an
        # existing node (log(exp(z)) is z) or a constant, which has no formula to splice
        return ("expr" in new[p.id].attrs and p.id not in root_ids and len(users.get(p.id, ())) == 1
                and p.shape == user.shape and n_inputs + len(new[p.id].inputs) <= MAX_INPUTS
                and sp.count_ops(new[p.id].attrs["expr"]) <= MAX_OPS)

    new: dict[int, Node] = {}
    for n in order:
        if not n.inputs:
            new[n.id] = n
            continue
        if "expr" not in n.attrs:
            new[n.id] = _rebuild(n, [new[i.id] for i in n.inputs])
            continue
        inputs: list[Node] = []
        subs = {}
        origin = n.origin
        xs = S.symbols(len(n.inputs))
        for x, old in zip(xs, n.inputs):
            src = new[old.id]
            if inlinable(old, n, len(inputs)):
                # the producer is already fused with its own producers: splice its formula
                pxs = S.symbols(len(src.inputs))
                psubs = {}
                for px, pin in zip(pxs, src.inputs):
                    if pin not in inputs:
                        inputs.append(pin)
                    psubs[px] = _tmp(inputs.index(pin))
                subs[x] = src.attrs["expr"].xreplace(psubs)
                origin += src.origin
            else:
                if src not in inputs:
                    inputs.append(src)
                subs[x] = _tmp(inputs.index(src))
        expr = n.attrs["expr"].xreplace(subs)
        expr = expr.xreplace({_tmp(i): x for i, x in enumerate(S.symbols(len(inputs)))})
        if inputs == [new[i.id] for i in n.inputs] and expr == n.attrs["expr"]:
            new[n.id] = _rebuild(n, inputs)
        else:
            made = E.make("ew", inputs, expr, label=n.label)
            if made not in inputs:  # not an identity that returned an existing node
                made.origin = origin
            new[n.id] = made
    return [new[r.id] for r in roots]


def _tmp(i: int):
    return sp.Symbol(f"_t{i}", real=True)
