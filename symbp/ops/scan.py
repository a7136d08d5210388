"""Recurrences: ``scan`` traces a step function once into a cell graph; loops stay loops.

``sb.scan(step, xs, init)`` calls ``step(carry, x_t)`` ONCE on placeholders, so the cell is a
small closed graph whatever the sequence length T. Outer tensors the step closes over
(parameters, batch-wide context) become the cell's *captured* inputs. The cell's backward is
derived once too (``symbp.autodiff.derive.vjp`` on the cell graph) and closed over its own
placeholders: the cotangents of carry-out and y_t, x_t, the captured inputs, and the forward
values it reads (*residuals*, saved per step by the forward loop). Backends emit both cells
inside a loop; derivation and code size never depend on T.

In the tensor graph a scan is one ``scan`` node (its value is a tuple: final carries, stacked
per-step outputs, stacked residuals) read through ``scan_out`` projections, since a Node has a
single output. Its vector-Jacobian rule returns a ``scan_bwd`` node, the reverse loop.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

from symbp.ir import Node, SymbpError, check_identifier, fmt_shape, topo_order
from symbp.ops.hoist import enabled, hoist
from symbp.ops.structural import const, node
from symbp.registry import OpDef, register


@dataclass(frozen=True, eq=False)
class Cell:
    """A traced step, forward and backward, as closed graphs over placeholder nodes.

    Placeholders are leaf nodes of op "input" with no name and ``attrs["role"]``.

    Attributes:
        carry_in, xs_in, captured: forward placeholders (carries, per-step inputs, outer tensors).
        carry_out, ys: the step's results.
        residuals: forward nodes (or carry placeholders) the backward reads, saved per step.
        d_carry_out, d_ys: backward placeholders: cotangents of carry_out and ys.
        saved: backward placeholders standing for ``residuals`` at step t.
        d_carry_in, d_xs, d_captured: backward results (None for int inputs / no path).
        d_h: total cotangent of each carry_out (for gradient-norm diagnostics).
        hoisted: (x_t placeholder, the step's value it stands for) per product hoisted out of the loop.
    """

    carry_in: tuple
    xs_in: tuple
    captured: tuple
    carry_out: tuple
    ys: tuple
    residuals: tuple
    d_carry_out: tuple
    d_ys: tuple
    saved: tuple
    d_carry_in: tuple
    d_xs: tuple
    d_captured: tuple
    d_h: tuple
    hoisted: tuple = ()

    def forward_roots(self) -> list[Node]:
        return [*self.carry_out, *self.ys, *self.residuals]

    def backward_roots(self) -> list[Node]:
        return [r for r in (*self.d_carry_in, *self.d_xs, *self.d_captured, *self.d_h) if r is not None]


# A step placeholder's id -> the outer tensor it stands for (x_t: the sequence; a carry: its
# initial value), so ``model_of`` can find the model of a layer called inside a step.
_TRACED_FROM: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def traced_from(n: Node) -> Node | None:
    """The outer tensor a step's x_t or carry placeholder stands for, else None."""
    return _TRACED_FROM.get(n.id)


def placeholder(shape: tuple, dtype: str, role: tuple, label: str | None = None, outer: Node | None = None) -> Node:
    """A cell input: a leaf the emitters bind to a loop variable.

    An int placeholder remembers the model inputs its values come from (``outer``'s
    sources), so a range check on labels inside the loop can name the user's input.
    """
    attrs = {"role": role}
    if outer is not None and outer.dtype == "int64":
        attrs["sources"] = sources(outer)
    return Node("input", (), shape, dtype, attrs, label=label)


def sources(x: Node) -> tuple[str, ...]:
    """The names of the model inputs whose values reach ``x``, in creation order; through a
    loop's placeholders too. Meant for int tensors (labels, ids), whose graphs are small."""
    found: dict[int, tuple[str, ...]] = {}
    stack, seen = [x], set()
    while stack:
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.op == "input":
            found[n.id] = n.attrs.get("sources", ()) if "role" in n.attrs else (n.name,)
        stack.extend(n.inputs)
    return tuple(dict.fromkeys(name for k in sorted(found) for name in found[k]))


def substitute(roots: list, mapping: dict[int, Node]) -> list:
    """Rebuild the graph of ``roots`` with nodes replaced per ``mapping`` (node id -> node).

    Nodes not depending on a replaced node are kept as they are. Iterative (deep graphs).
    """
    new: dict[int, Node] = {}
    todo = [r for r in roots if r is not None]
    stop = set(mapping)
    order = _topo_until(todo, stop)
    for n in order:
        if n.id in mapping:
            new[n.id] = mapping[n.id]
            continue
        ins = [new.get(i.id, i) for i in n.inputs]
        if all(a is b for a, b in zip(ins, n.inputs)):
            new[n.id] = n
        else:
            new[n.id] = Node(n.op, ins, n.shape, n.dtype, n.attrs, n.name, n.label)
    return [None if r is None else new[r.id] for r in roots]


def _topo_until(roots: list[Node], stop: set[int]) -> list[Node]:
    """Ancestors of ``roots`` in creation order, not looking past nodes in ``stop``."""
    seen: dict[int, Node] = {}
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n.id not in seen:
            seen[n.id] = n
            if n.id not in stop:
                stack.extend(n.inputs)
    return [seen[i] for i in sorted(seen)]


def _as_tuple(v, what: str) -> tuple[tuple, bool]:
    """(nodes, was_tuple); raises on anything that is not a tensor or a tuple of tensors."""
    if isinstance(v, Node):
        return (v,), False
    if isinstance(v, (tuple, list)) and v and all(isinstance(i, Node) for i in v):
        return tuple(v), True
    raise SymbpError(f"{what}: expected a symbolic tensor or a tuple of them, got {type(v).__name__}")


def trace(step, xs: tuple, init: tuple, xs_tuple: bool, init_tuple: bool, where: str):
    """Call ``step`` once on placeholders and derive its backward; see the module docstring.

    Returns:
        (cell, the outer tensors captured, whether the step returned a tuple of y_t, the
        sequences scanned: ``xs`` and then the hoisted products over all steps, see ``hoist``).
    """
    start = Node("const", (), (), "float", {"value": 0.0}).id  # every node traced is newer
    carry_in = tuple(placeholder(c.shape, c.dtype, ("carry", k), f"h{k}") for k, c in enumerate(init))
    xs_in = tuple(placeholder((None, *x.shape[2:]), x.dtype, ("x", k), f"x{k}", x) for k, x in enumerate(xs))
    _TRACED_FROM.update({p.id: o for p, o in zip((*carry_in, *xs_in), (*init, *xs))})
    out = step(carry_in if init_tuple else carry_in[0], None if not xs else xs_in if xs_tuple else xs_in[0])
    if not isinstance(out, tuple) or len(out) != 2:
        raise SymbpError(f"{where}: the step function must return a pair (carry, y_t), "
                         f"got {type(out).__name__}")
    carry_out, carry_tuple = _as_tuple(out[0], f"{where}: the carry returned by the step")
    if carry_tuple != init_tuple or len(carry_out) != len(init):
        raise SymbpError(f"{where}: the step returns a carry of {len(carry_out)} tensor(s)"
                         f"{' (a tuple)' if carry_tuple else ''}, but init has {len(init)}"
                         f"{' (a tuple)' if init_tuple else ''}; they must have the same structure")
    for k, (c, o) in enumerate(zip(init, carry_out)):
        if c.shape != o.shape or c.dtype != o.dtype:
            raise SymbpError(f"{where}: carry {k} starts with shape {fmt_shape(c.shape)} ({c.dtype}) but the step "
                             f"returns shape {fmt_shape(o.shape)} ({o.dtype}); they must match")
    ys = () if out[1] is None else _as_tuple(out[1], f"{where}: the per-step output y_t")[0]
    for k, y in enumerate(ys):
        if y.shape[:1] != (None,):
            raise SymbpError(f"{where}: per-step output {k} must have the batch axis first, "
                             f"got shape {fmt_shape(y.shape)}")
    hoisted = ()
    if enabled():  # products that do not read the carry: once over all steps, before the loop
        roots, xs_in, xs, hoisted = hoist([*carry_out, *ys], carry_in, xs_in, xs, start, placeholder)
        carry_out, ys = tuple(roots[:len(carry_out)]), tuple(roots[len(carry_out):])
    # Outer tensors the step reads become explicit captured inputs (constants are just copied).
    phs = {p.id for p in (*carry_in, *xs_in)}
    outer: dict[int, Node] = {}
    stack, seen = [*carry_out, *ys], set()
    while stack:
        n = stack.pop()
        if n.id in seen or n.id in phs:
            continue
        seen.add(n.id)
        # Parameters declared inside the step are shared across time like any outer tensor.
        if n.id < start or n.op in ("param", "input") and "role" not in n.attrs:
            if not (n.op == "const" and not n.inputs):
                outer[n.id] = n
            continue
        stack.extend(n.inputs)
    if any(n.op == "scan" for n in _topo_until([*carry_out, *ys], phs | set(outer)) if n.id >= start):
        raise SymbpError(f"{where}: the step function {getattr(step, '__name__', repr(step))!r} runs a scan "
                         "(or a recurrent layer) inside it; a loop inside a loop's step is not supported: "
                         "stack the loops instead (scan over the outputs of another scan)")
    outer_t = tuple(outer[k] for k in sorted(outer))
    captured = tuple(placeholder(n.shape, n.dtype, ("captured", k), n.name or n.label, n)
                     for k, n in enumerate(outer_t))
    sub = substitute([*carry_out, *ys], {o.id: c for o, c in zip(outer_t, captured)})
    carry_out, ys = tuple(sub[:len(carry_out)]), tuple(sub[len(carry_out):])
    cell = replace(_backward(carry_in, xs_in, captured, carry_out, ys), hoisted=hoisted)
    return cell, outer_t, isinstance(out[1], (tuple, list)), xs


def _backward(carry_in, xs_in, captured, carry_out, ys) -> Cell:
    """Derive the cell's backward once and close it over its own placeholders."""
    from symbp.autodiff.derive import vjp

    d_carry_out = tuple(placeholder(c.shape, "float", ("d_carry", k), f"d_h{k}") for k, c in enumerate(carry_out))
    d_ys = tuple(placeholder(y.shape, "float", ("d_y", k), f"d_y{k}") for k, y in enumerate(ys))
    fwd = [*carry_out, *ys]
    diff = [(o, s) for o, s in zip(fwd, (*d_carry_out, *d_ys)) if o.dtype == "float"]
    wrt = [*carry_in, *xs_in, *captured, *carry_out]
    grads = vjp([o for o, _ in diff], [s for _, s in diff], wrt) if diff else [None] * len(wrt)
    nc, nx, ncap = len(carry_in), len(xs_in), len(captured)
    d_h = tuple(g if g is not None else s for g, s in zip(grads[nc + nx + ncap:], d_carry_out))
    grads = [None if w.dtype != "float" else g for w, g in zip(wrt, grads[:nc + nx + ncap])]
    # Forward values the backward reads and that change with t are saved per step; values
    # that depend only on captured inputs (e.g. a transposed weight) are recomputed.
    fwd_nodes = topo_order(fwd)
    fwd_ids = {n.id for n in fwd_nodes}
    step_dep = {p.id for p in (*carry_in, *xs_in)}
    for n in fwd_nodes:
        if any(i.id in step_dep for i in n.inputs):
            step_dep.add(n.id)
    x_ids = {p.id for p in xs_in}
    bwd_roots = [g for g in (*grads, *d_h) if g is not None]
    residuals: dict[int, Node] = {}
    for n in topo_order(bwd_roots):
        if n.id in fwd_ids:
            continue
        for i in n.inputs:
            if i.id in fwd_ids and i.id in step_dep and i.id not in x_ids:
                residuals.setdefault(i.id, i)
    for r in bwd_roots:
        if r.id in fwd_ids and r.id in step_dep and r.id not in x_ids:
            residuals.setdefault(r.id, r)
    res = tuple(residuals[k] for k in sorted(residuals))
    saved = tuple(placeholder(r.shape, r.dtype, ("saved", k), "s_" + (r.label or r.op)) for k, r in enumerate(res))
    closed = substitute([*grads, *d_h], {r.id: s for r, s in zip(res, saved)})
    g = closed[:nc + nx + ncap]
    return Cell(carry_in, xs_in, captured, carry_out, ys, res, d_carry_out, d_ys, saved,
                tuple(g[:nc]), tuple(g[nc:nc + nx]), tuple(g[nc + nx:]), tuple(closed[nc + nx + ncap:]))


# -- the ops --------------------------------------------------------------------------------

def _scan_shape(inputs, **attrs):
    return (), "float"


def _out_shape(inputs, index, shape, dtype):
    return shape, dtype


def _scan_vjp(nd: Node, g: Node) -> list:
    """The reverse loop: one scan_bwd node, projected onto each of the scan's inputs."""
    cell, T = nd.attrs["cell"], nd.attrs["length"]
    nc = len(cell.carry_in)
    cots = _unpack(g)
    outs = scan_outputs(cell, T)
    seeds = [cots[k] if k in cots else const(0.0, s) for k, (s, _) in enumerate(outs[:nc + len(cell.ys)])]
    # Leaves that are not parameters (data, constants, dropout masks) need no cotangent: skip their products.
    need = tuple(i.dtype == "float" and (i.op == "param" or bool(i.inputs)) for i in nd.inputs)
    bwd = node("scan_bwd", (*nd.inputs, nd, *seeds), label=f"d_{nd.label or 'scan'}", need=need, **nd.attrs)
    result = []
    for k, inp in enumerate(nd.inputs):
        if not need[k]:
            result.append(None)
            continue
        result.append(node("scan_out", (bwd,), index=k, shape=inp.shape, dtype="float"))
    return result


def _unpack(g: Node) -> dict[int, Node]:
    """Per-output cotangents from the sum of scan_cot packets that derive accumulated."""
    out: dict[int, Node] = {}
    stack = [g]
    while stack:
        n = stack.pop()
        if n.op == "scan_cot":
            k = n.attrs["index"]
            out[k] = n.inputs[0] if k not in out else out[k] + n.inputs[0]
        else:  # an elementwise sum made by derive's accumulation
            stack.extend(n.inputs)
    return out


_TESTED = {"tested_by": "tests/test_scan.py"}  # needs a traced cell: not buildable from a sample
register(OpDef("scan", "structural", shape=_scan_shape, vjp=_scan_vjp, sample=_TESTED))
register(OpDef("scan_bwd", "structural", shape=_scan_shape, vjp=None, sample=_TESTED))
register(OpDef("scan_out", "structural", shape=_out_shape, sample=_TESTED,
               vjp=lambda nd, g: (node("scan_cot", (g,), index=nd.attrs["index"]),)))
register(OpDef("scan_cot", "structural", shape=lambda inputs, index: ((), "float"), vjp=None, sample=_TESTED))


def scan_outputs(cell: Cell, T: int) -> list[tuple[tuple, str]]:
    """(shape, dtype) of each item of a scan's value: final carries, stacked y, saved (T, ...)."""
    out = [(c.shape, c.dtype) for c in cell.carry_out]
    out += [((None, T, *y.shape[1:]), y.dtype) for y in cell.ys]
    out += [((T, *r.shape), r.dtype) for r in cell.residuals]
    return out


def name_loops(roots: list[Node]) -> None:
    """Give every scan feeding ``roots`` a label no other scan there has (state, diagnostics
    and generated names are keyed by it): in creation order, a repeated label gets a suffix
    (``scan``, ``scan_2``, ...); the scan's ``_last``/``_seq`` outputs follow it."""
    order = topo_order([r for r in roots if r is not None])
    used: set[str] = set()
    renamed: dict[int, tuple[str, str]] = {}
    for n in order:
        if n.op != "scan":
            continue
        label, k = n.label or "scan", 2
        new = label
        while new in used:
            new, k = f"{label}_{k}", k + 1
        used.add(new)
        if new != n.label:
            renamed[n.id] = (label, new)
            n.label = new
    for n in order:
        if n.op == "scan_out" and n.inputs[0].id in renamed and n.label:
            old, new = renamed[n.inputs[0].id]
            if n.label.startswith(old + "_"):
                n.label = new + n.label[len(old):]


def scan(step, xs, init, truncate: tuple | None = None, stateful: bool = False, label: str | None = None,
         length: int | None = None):
    """Run ``step(carry, x_t) -> (carry, y_t)`` over the time axis (axis 1) of ``xs``.

    Args:
        step: called once, on placeholders, to trace the cell.
        xs: a sequence tensor (batch, T, ...) or a tuple of them (same T); x_t drops axis 1.
            None: a loop of ``length`` steps with no input sequence; the step gets None as x_t.
        init: the initial carry: a tensor with the batch axis first (e.g. ``sb.zeros((H,))``)
            or a tuple of them (LSTM: (h, c)).
        truncate: (k1, k2) for truncated backpropagation through time, None: full BPTT. Chunks
            of k1 steps [k1 j, e_j), e_j = min(k1 (j+1), T); a chunk's errors reach steps
            t >= max(k1 j - max(k2 - k1, 0), e_j - k2, 0): (k, k) is detach-every-k for any T
            (``symbp.autodiff.bptt.window_start``).
        stateful: start each forward pass from the previous pass's final carry (same batch
            size), ``tr.reset_state()`` to start over from ``init``. No gradient crosses batches.
        label: names the loop in generated code, diagnostics and errors.
        length: the number of steps T: required when ``xs`` is None, else it must equal T.
    Returns:
        (final carry, stacked outputs): same structures as ``init`` and the step's y_t; each
        stacked output has shape (batch, T, ...).
    """
    if label is not None:  # it names generated code, state and diagnostics: never arbitrary text
        check_identifier(label, "scan")
    where = f"scan {label!r}" if label else "scan"
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise SymbpError(f"{where}: length must be a positive int, got {length!r}")
    if xs is None and length is None:
        raise SymbpError(f"{where}: with no input sequence (xs=None), say how many steps: length=T")
    xs_t, xs_tuple = ((), False) if xs is None else _as_tuple(xs, f"{where}: xs")
    init_t, init_tuple = _as_tuple(init, f"{where}: init")
    for x in xs_t:
        if x.ndim < 2 or x.shape[0] is not None or x.shape[1] is None:
            raise SymbpError(f"{where}: {x.describe()} must have shape (batch, T, ...), got {fmt_shape(x.shape)}")
    T = xs_t[0].shape[1] if xs_t else length
    if length is not None and length != T:
        raise SymbpError(f"{where}: length={length} but the sequence has {T} steps")
    if any(x.shape[1] != T for x in xs_t):
        raise SymbpError(f"{where}: sequences of different lengths: " +
                         ", ".join(f"{x.describe()} {fmt_shape(x.shape)}" for x in xs_t))
    if T < 1:
        raise SymbpError(f"{where}: the sequence is empty (T = 0)")
    for c in init_t:
        if c.shape[:1] != (None,):
            raise SymbpError(f"{where}: the initial carry {c.describe()} must have the batch axis first, got "
                             f"{fmt_shape(c.shape)}; use sb.zeros(shape) or add a batched zero")
    if truncate is not None:
        if (not isinstance(truncate, tuple) or len(truncate) != 2
                or not all(isinstance(k, int) and k >= 1 for k in truncate)):
            raise SymbpError(f"{where}: truncate must be a pair (k1, k2) of positive ints, got {truncate!r}")
        if max(truncate) > T:
            raise SymbpError(f"{where}: the sequence has {T} steps, shorter than the truncation window "
                             f"(k1, k2) = {truncate}")
    cell, outer, y_tuple, xs_t = trace(step, xs_t, init_t, xs_tuple, init_tuple, where)
    s = node("scan", (*xs_t, *init_t, *outer), label=label or "scan", cell=cell, length=T,
             truncate=truncate, stateful=bool(stateful))
    for k, u in enumerate(xs_t[len(xs_t) - len(cell.hoisted):]):  # the equations' u_t, over all t
        u.label = f"{label or 'scan'}_u" + (str(k + 1) if len(cell.hoisted) > 1 else "")
    outs = scan_outputs(cell, T)
    proj = [node("scan_out", (s,), index=k, shape=sh, dtype=dt) for k, (sh, dt) in enumerate(outs)]
    nc = len(cell.carry_out)
    carries, ys = proj[:nc], proj[nc:nc + len(cell.ys)]
    for k, c in enumerate(carries):
        c.label = f"{label or 'scan'}_last" + (str(k) if nc > 1 else "")
    for k, y in enumerate(ys):
        y.label = f"{label or 'scan'}_seq" + (str(k) if len(ys) > 1 else "")
    ys_out = None if not ys else (tuple(ys) if y_tuple else ys[0])
    return (tuple(carries) if init_tuple else carries[0]), ys_out
