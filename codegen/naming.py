"""Readable, collision-free variable names for generated code, taken from the model."""

from __future__ import annotations

import builtins
import keyword

from symbp.ir import Node, sanitise

MODULE_GLOBALS = {
    "DTYPE", "MODEL", "INPUTS", "PARAMS", "OUTPUTS", "BUFFERS", "CLASSES", "SLOTS", "HYPER", "NEEDS", "TRUNCATED",
    "FUNCTIONS", "STATE", "GRAD_NORMS", "gradients", "loss", "predict", "step", "update",
}
"""What a generated module defines at its top level: a local of the same name inside one of its
functions (a nested loop function reads ``STATE``) would hide it."""

RESERVED = set(keyword.kwlist) | set(dir(builtins)) | MODULE_GLOBALS | {
    "np", "math", "B", "P", "D", "S", "H", "t", "self", "grads",
}


class Namer:
    """Gives every node one identifier: parameters and inputs keep their names, gradients
    read ``dW1``, layer outputs their layer's name; anything else ``t<k>``. Never a reserved word."""

    def __init__(self, reserved=(), hints: dict | None = None, forward: set | None = None):
        self.taken = set(RESERVED) | set(reserved)
        self.hints = hints or {}  # node id -> a preferred name (from the numbered equations)
        self.forward = forward  # ids of forward-pass nodes: there a layer's label is the best name
        self.names: dict[int, str] = {}
        self.next: dict[str, int] = {}  # next suffix to try per base: naming stays linear

    def fresh(self, base: str) -> str:
        base = sanitise(base)
        name, k = base, self.next.get(base, 1)
        while name in self.taken:
            name = f"{base}_{k}"
            k += 1
        self.next[base] = k
        self.taken.add(name)
        return name

    def temp(self, prefix: str) -> str:
        """A generated temporary ``<prefix><k>`` (prefix starts with '_', which user names
        cannot) that no other name of this scope has, so one Namer owns every name."""
        k = self.next.get(prefix, 0)
        while f"{prefix}{k}" in self.taken:
            k += 1
        self.next[prefix] = k + 1
        self.taken.add(f"{prefix}{k}")
        return f"{prefix}{k}"

    def __call__(self, n: Node) -> str:
        if n.id not in self.names:
            hint = next((self.hints[o] for o in n.origin if o in self.hints), None)
            if n.name:
                base = n.name
            elif n.label and (self.forward is None or n.origin[0] in self.forward):
                base = n.label
            elif hint:
                base = hint
            elif n.label:
                base = n.label
            else:
                base = "t"
            self.names[n.id] = self.fresh(base)
        return self.names[n.id]


def equation_comment(equations, n: Node, shown: set) -> list[str]:
    """``(k) lhs = rhs`` for each equation k (of ``d.equations()``) that node ``n`` is the first
    in ``shown`` to compute: the backends put it in a comment above the statement, so a reader
    can go from the maths to the code and back. One line each, whitespace collapsed."""
    numbers = sorted({k for o in n.origin if (k := equations.number(o)) is not None} - shown)
    shown.update(numbers)
    out = []
    for k in numbers:
        text = " ".join(equations.entries[k - 1].text().split())
        out.append(f"({k}) {text if len(text) <= 90 else text[:87] + '...'}")
    return out


def equation_names(equations) -> dict[int, str]:
    """Node id -> the name its equation gives it, as an identifier (Z₁ -> Z1, δZ₂ -> dZ2)."""
    sub = str.maketrans("₀₁₂₃₄₅₆₇₈₉δ∂", "0123456789dd")
    out = {}
    for e in equations.entries:
        text = e.text().split(" = ")[0].translate(sub)
        if text.isascii() and text.replace("_", "").isalnum():
            out[e.node] = text
    return out


def model_namer(d) -> tuple[Namer, object]:
    """The Namer every backend uses for derivation ``d``, and ``d``'s numbered equations: inputs
    and parameters keep their names; other nodes are named after their equations."""
    from symbp.ir import topo_order

    eqs = d.equations()
    forward = {n.id for n in topo_order([*d.forward_roots(), *d.updates.values()])}
    namer = Namer(hints=equation_names(eqs), forward=forward)
    for n in [*d.inputs.values(), *d.params.values(), *d.buffers.values()]:
        namer(n)
    return namer, eqs
