"""Reverse-mode derivation over the tensor graph.

One walk in reverse topological order (iterative: no recursion limit on deep graphs). A
node's cotangent is the sum of what each of its users sends it, reduced over the axes
along which it was broadcast. Each op's vector-Jacobian rule comes from the registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from symbp.ir import Node, SymbpError, topo_order
from symbp.ops import elementwise as E
from symbp.ops.structural import const, reduce_to
from symbp.registry import opdef


def vjp(outputs: list[Node], seeds: list[Node], wrt: list[Node],
        cotangents: dict | None = None) -> list[Node | None]:
    """Cotangents of ``wrt`` given cotangents ``seeds`` of ``outputs``.

    Args:
        cotangents: if given, filled with every node's total cotangent (node id -> Node),
            which lets the equations name each δ after the tensor it belongs to.
    Returns:
        One node per ``wrt`` entry, shaped like it, or None where no path connects it.
    """
    order = topo_order(outputs)
    # Only nodes that depend on some `wrt` node can carry a gradient.
    live = {w.id for w in wrt}
    for n in order:
        if any(i.id in live for i in n.inputs):
            live.add(n.id)
    wanted = {w.id for w in wrt}
    cot: dict[int, Node] = {}
    for out, seed in zip(outputs, seeds):
        _accumulate(cot, out, seed)
    for n in reversed(order):
        g = cot.get(n.id)
        if g is None or n.id in wanted and not n.inputs:
            continue
        if not any(i.id in live for i in n.inputs):
            continue
        rule = opdef(n.op).vjp
        if rule is None:
            continue
        for inp, c in zip(n.inputs, rule(n, g)):
            if c is not None and inp.id in live and inp.dtype == "float":
                _accumulate(cot, inp, reduce_to(c, inp.shape))
    if cotangents is not None:
        cotangents.update(cot)
    return [cot.get(w.id) for w in wrt]


def _accumulate(cot: dict, node: Node, c: Node) -> None:
    if c.label is None:
        c.label = "d_" + (node.name or node.label or node.op)
    prev = cot.get(node.id)
    cot[node.id] = c if prev is None else E.add(prev, c)
    cot[node.id].label = c.label


_DERIVING = threading.RLock()  # one derivation at a time: rare, and it keeps Derivation copyable


@dataclass(eq=False)
class Derivation:
    """A model's forward graph together with its derived backward graph.

    The backward graph is built when first read (``grads``, ``cotangents``, and everything
    that reads them: equations, code generation): a start from the compiled-module cache,
    keyed on the forward graph, never needs it, nor SymPy.

    Attributes:
        name: the model's name.
        loss: the scalar loss node; None for a model with outputs and no loss, which compiles
            for inference (predict only) and has no gradients.
        inputs: input nodes by name (per-batch data).
        params: parameter nodes by name, in definition order.
        grads: d loss / d param, by parameter name.
        outputs: named prediction outputs (``m.output``).
        cotangents: forward node id -> its total cotangent node (d loss / d node).
        dtype: the float dtype the model's inputs declare ("float32"/"float64"), or None;
            ``sb.compile`` builds at it unless given a dtype.
        buffers: non-trainable state by name (``Model.buffer``).
        updates: buffer name -> the value ``step`` gives it (``Model.assign``).
    """

    name: str
    loss: Node | None
    inputs: dict[str, Node]
    params: dict[str, Node]
    outputs: dict[str, Node] = field(default_factory=dict)
    dtype: str | None = None
    buffers: dict[str, Node] = field(default_factory=dict)
    updates: dict[str, Node] = field(default_factory=dict)
    _backward: tuple | None = field(default=None, repr=False)

    def forward_roots(self) -> list[Node]:
        """The nodes the forward pass computes: the loss (if any), then the named outputs."""
        return [*([] if self.loss is None else [self.loss]), *self.outputs.values()]

    def for_outputs(self, names) -> Derivation:
        """The inference-only derivation computing just the named outputs (``predict(outputs=)``).

        Args:
            names: names of ``outputs``, all known (the caller checks them).
        Returns:
            A Derivation with no loss or gradients; inputs and parameters stay as declared, so
            data is checked against the model's inputs (those not needed are just not read).
        """
        return Derivation(self.name, None, dict(self.inputs), dict(self.params),
                          {k: self.outputs[k] for k in self.outputs if k in names}, self.dtype,
                          dict(self.buffers), {})

    @property
    def grads(self) -> dict[str, Node]:
        return self._derive()[0]

    @property
    def cotangents(self) -> dict[int, Node]:
        return self._derive()[1]

    def _derive(self) -> tuple[dict, dict]:
        """(grads, cotangents), derived once (two threads compiling one derivation share it);
        both empty for a model without a loss."""
        with _DERIVING:
            if self._backward is None:
                cotangents: dict[int, Node] = {}
                out = {}
                if self.loss is not None:
                    grads = vjp([self.loss], [const(1.0)], list(self.params.values()), cotangents)
                    for (name, p), g in zip(self.params.items(), grads):
                        if g is None:
                            g = const(0.0, p.shape)
                        g.label = "d" + name
                        out[name] = g
                self._backward = (out, cotangents)
        return self._backward

    def equations(self):
        """The derived gradient equations (print them, or ``.latex()`` / Jupyter display)."""
        from symbp.show.equations import equations

        return equations(self)

    def explain(self, batch: int, optimizer=None, dtype: str | None = None):
        """What one training step costs at ``batch`` examples, before compiling: FLOPs (forward,
        backward, update), parameters, the step's buffers, the costliest ops, and the memory each
        recurrence saves for the backward pass (print it, or ``.data`` for a dict; see
        ``symbp.show.cost.explain`` for the arguments)."""
        from symbp.show.cost import explain

        return explain(self, batch, optimizer, dtype)

    def truncated_loops(self) -> dict:
        """{loop label: (k1, k2)} for each recurrence with truncated backpropagation through
        time, whose gradients are by design not those of the loss."""
        return {n.label: n.attrs["truncate"] for n in topo_order(self.forward_roots())
                if n.op == "scan" and n.attrs.get("truncate") is not None}

    def graph(self, backward: bool = True):
        """The forward (and backward) graph as a networkx DiGraph."""
        from symbp.ir import to_networkx

        roots = self.forward_roots() + (list(self.grads.values()) if backward else [])
        return to_networkx(roots)

    def dot(self, backward: bool = False) -> str:
        """The forward (with ``backward``: and backward) graph as Graphviz DOT text."""
        from symbp.show.pictures import to_dot

        return to_dot(self, backward)

    def _repr_svg_(self):
        """Jupyter shows the forward graph when Graphviz's ``dot`` is installed (else nothing)."""
        from symbp.show.pictures import have_dot, render_svg

        return render_svg(self.dot()) if have_dot() else None


def derive(model) -> Derivation:
    """Derive the gradient of ``model``'s loss with respect to each of its parameters.

    Args:
        model: a ``symbp.Model`` on which ``minimize`` was called, or one with outputs
            (``m.output``) and no loss: that derives for inference (predict only, no gradients).
    Returns:
        A Derivation holding forward and backward graphs.
    """
    loss = model.loss
    if loss is None and not model.outputs:
        raise SymbpError(f"model {model.name!r}: nothing to derive; call m.minimize(loss) to train it, "
                         "or name outputs with m.output(name, tensor) to compile it for inference")
    from symbp.ops.scan import name_loops  # here, not at the top: symbp.ops.scan derives its cells with vjp

    name_loops([*([] if loss is None else [loss]), *model.outputs.values(), *model.updates.values()])
    if loss is None:  # inference only: the forward graph to the outputs, nothing to differentiate
        return Derivation(model.name, None, dict(model.inputs), dict(model.params), dict(model.outputs),
                          model.dtype, dict(model.buffers), {})
    params = dict(model.params)
    ancestors = {n.id for n in topo_order([loss])}
    unused = [name for name, p in params.items() if p.id not in ancestors]
    if unused:
        raise SymbpError(f"model {model.name!r}: parameter(s) {', '.join(map(repr, unused))} "
                         "do not affect the loss")
    return Derivation(model.name, loss, dict(model.inputs), params, dict(model.outputs), model.dtype,
                      dict(model.buffers), dict(model.updates))
