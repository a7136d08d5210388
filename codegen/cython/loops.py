"""Cython emission of recurrences: the scan and its reverse loop as C loops over time.

The same two loops as :mod:`codegen.numpy.loops`, in C: the cell graph (``node.attrs["cell"]``,
traced and derived once) is compiled by the backend's own machinery into the body of a
``for`` over t, its placeholders bound to per-step views (x_t and the saved values at t are
the sequence's views with an offset ``t * stride``, so nothing is copied in). Every buffer
(the cell's, the double-buffered carries, the (T, B, ...) saved values) is an array of the
enclosing generated function, allocated once per batch size; the source does not depend on T
except for the literal T itself.

The scan's value is a tuple, read by ``scan_out``: the emitter hands the enclosing function a
:class:`Items` view whose ``items`` are dense private arrays (never reused by the schedule,
so the final carries are still there when the Python wrapper stores the state).

State and diagnostics stay in Python, as the NumPy module's: the wrapper of each generated
function copies the caller's ``_ws.state[label]`` into a state-in array (a flag in ``io`` says
which carries it holds), and afterwards stores copies of the final carries in ``_ws.state`` and
the norms of dL/dh_t in ``_ws.grad_norms`` (see ``Loop`` and ``codegen.cython.module``).

Beyond a literal port, three things the per-step loop does not need to repeat: a weight's
gradient sum_t a_t^T b_t becomes one product over the stacked steps after the loop; a weight
the reverse step only reads transposed is transposed once; the sum of zero-padded gate
gradients becomes a concat. Each time step is its own C function (gcc compile time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codegen.cython import kernels as K
from codegen.naming import Namer
from symbp.autodiff.bptt import window_start
from symbp.autodiff.optimise import optimise
from symbp.autodiff.schedule import schedule
from symbp.ir import Node, topo_order
from symbp.ops import scalar as S
from symbp.ops.hoist import gradient_products
from symbp.ops.scan import Cell, scan_outputs, substitute

T_VAR = "sb_t"
"""The loop counter of every time loop (no other generated C name has this form)."""


@dataclass(frozen=True)
class Items(K.View):
    """A scan's (or reverse loop's) value: a tuple of views, read by ``scan_out``."""

    items: tuple = ()


@dataclass
class Loop:
    """What the Python wrapper of a generated function does around a loop.

    Attributes:
        label: the loop's label (its key in the workspace's ``state`` / ``grad_norms``).
        state_in: per carry, (array index of the state-in array, io slot of its flag); empty
            for a loop that is not stateful.
        final: array indices of the final carries (stored in ``_ws.state`` when stateful).
        norms: array index of the (T,) norms of dL/dh_t (reverse loops), else None.
    """

    label: str
    state_in: list = field(default_factory=list)
    final: list = field(default_factory=list)
    norms: int | None = None


def at_t(v: K.View, axis: int) -> K.View:
    """``v`` with ``axis`` taken at index ``sb_t`` (a C variable): the axis's stride becomes an offset."""
    s = v.strides[axis]
    off = f"{T_VAR}*({K.cexpr(s)})" if s != (1, 0) else T_VAR
    return v.with_(shape=v.shape[:axis] + v.shape[axis + 1:], strides=v.strides[:axis] + v.strides[axis + 1:],
                   offset=f"{v.offset} + {off}" if v.offset else off)


def _ctype(dtype: str) -> str:
    return "int64_t" if dtype == "int64" else "sb_real"


class CellBody:
    """The C of a closed cell graph, its placeholders bound to views of the enclosing function.

    Buffers and temporaries become arrays of ``parent`` (a ``codegen.cython.emitter.Function``),
    whose emitters this reuses; ``views`` maps each root to the view holding its value.
    """

    def __init__(self, parent, roots: list, bound: dict[int, K.View]):
        from codegen.cython.emitter import Function

        self.parent, self.printer, self.itemsize = parent, parent.printer, parent.itemsize
        self.namer = Namer()
        live = [r for r in roots if r is not None]
        opt = _gather_slices(optimise(live)) if live else []
        self.sched = schedule(opt, frozenset(parent.view_ops))
        self.views: dict[int, K.View] = {}
        for n in self.sched.leaves:
            self.views[n.id] = bound[n.id]  # a placeholder: every cell leaf is one
        self.buffer_views = [parent.scratch(shape, dtype) for shape, dtype in self.sched.buffers]
        self.body: list[str] = []
        Function.compile_nodes(self)
        it = iter(opt)
        self.roots = [None if r is None else self.views[next(it).id] for r in roots]

    # the ctx interface of codegen.cython.kernels, delegated to the enclosing function
    def scratch(self, shape: tuple, dtype: str) -> K.View:
        return self.parent.scratch(shape, dtype)

    def tag(self) -> str:
        return self.parent.tag()

    def label_check(self, n: Node) -> tuple[str, int]:
        return self.parent.label_check(n)

    @property
    def view_ops(self):
        return self.parent.view_ops

    def _elementwise(self, n: Node, out: K.View, ins: list[K.View]) -> list[str]:
        from codegen.cython.emitter import Function

        return Function._elementwise(self, n, out, ins)


def _gather_slices(roots: list[Node]) -> list[Node]:
    """A sum of unslices that tile one axis (an LSTM's or GRU's gate gradients) becomes a concat:
    one copy per part instead of zero-filled full-size buffers added together, at every step."""
    mapping = {}
    for n in topo_order(roots):
        if "expr" not in n.attrs or len(n.inputs) < 2 or any(i.op != "unslice" for i in n.inputs):
            continue
        if n.attrs["expr"] != sum(S.symbols(len(n.inputs))) or len({i.id for i in n.inputs}) < len(n.inputs):
            continue
        parts, axis = [], None
        for u in n.inputs:
            cut = [k for k, (ix, d) in enumerate(zip(u.attrs["index"], n.shape))
                   if d is not None and (isinstance(ix, int) or tuple(ix) != (0, d, 1))]
            ix = u.attrs["index"][cut[0]] if len(cut) == 1 else None
            if ix is None or isinstance(ix, int) or ix[2] != 1 or axis not in (None, cut[0]):
                break
            axis = cut[0]
            parts.append((ix[0], ix[1], u.inputs[0]))
        else:
            parts.sort(key=lambda p: p[0])
            if [p[0] for p in parts] == [0] + [p[1] for p in parts[:-1]] and parts[-1][1] == n.shape[axis]:
                mapping[n.id] = Node("concat", [p[2] for p in parts], n.shape, n.dtype, {"axis": axis}, label=n.label)
    return substitute(roots, mapping) if mapping else roots


def _private(ctx, shape: tuple, dtype: str) -> tuple[int, K.View]:
    k = len(ctx.arrays)
    return k, ctx.scratch(shape, dtype)


def _swap(a: list[str], b: list[str], views: list[K.View]) -> list[str]:
    """Pointer swaps: the new values become current without a copy."""
    return [f"{{ {v.ctype} *sw_ = {x}; {x} = {y}; {y} = sw_; }}" for x, y, v in zip(a, b, views)]


def _carry_ptrs(ctx, prefix: str, cell: Cell) -> tuple[list, list, list, list, list]:
    """Two private arrays per carry and the C pointer variables walking them.

    Returns:
        (current pointer names, new pointer names, their views (2 lists), declarations).
    """
    tag = ctx.tag()
    cur, new, lines, vcur, vnew = [], [], [], [], []
    for k, c in enumerate(cell.carry_in):
        for names, views in ((cur, vcur), (new, vnew)):
            _, v = _private(ctx, c.shape, c.dtype)
            name = f"{tag}{prefix}{'h' if names is cur else 'n'}{k}"
            names.append(name)
            lines.append(f"{_ctype(c.dtype)} *{name} = {v.base()};")
            views.append(K.dense(name, c.shape, _ctype(c.dtype)))
    return cur, new, vcur, vnew, lines


def emit_scan(ctx, n: Node, out: K.View, *ins: K.View) -> list[str]:
    """The forward loop t = 0..T-1; ``ctx.views[n.id]`` becomes the tuple of its results."""
    cell: Cell = n.attrs["cell"]
    T, label = n.attrs["length"], n.label or "scan"
    nx, nc, ny = len(cell.xs_in), len(cell.carry_in), len(cell.ys)
    items = []
    for shape, dtype in scan_outputs(cell, T):
        items.append(_private(ctx, shape, dtype))
    loop = Loop(label, final=[k for k, _ in items[:nc]])
    ctx.views[n.id] = Items(out.ptr, out.shape, out.strides, out.offset, out.ctype, tuple(v for _, v in items))
    o = [v for _, v in items]
    # Carries: two buffers each; the step writes all new carries, then the pointers swap, so a
    # cell that shifts or swaps its carries ((a, b) -> (n, a)) never reads one already replaced.
    cur, new, vcur, vnew, decl = _carry_ptrs(ctx, "f", cell)
    bound = {p.id: at_t(ins[i], 1) for i, p in enumerate(cell.xs_in)}
    bound.update({p.id: v for p, v in zip(cell.carry_in, vcur)})
    bound.update({p.id: ins[nx + nc + j] for j, p in enumerate(cell.captured)})
    body = CellBody(ctx, cell.forward_roots(), bound)
    lines = ["{", *["    " + d for d in decl]]
    for k in range(nc):
        init = K.copy(vcur[k], ins[nx + k], ctx.tag())
        if n.attrs["stateful"]:  # the wrapper filled the state-in array and set the flag
            slot = ctx.io_slots
            ctx.io_slots += 1
            sk, sv = _private(ctx, cell.carry_in[k].shape, cell.carry_in[k].dtype)
            loop.state_in.append((sk, slot))
            lines += [f"    if (io[{slot}] != 0)"] + ["    " + x for x in K.copy(vcur[k], sv, ctx.tag())]
            lines += ["    else"]
        lines += ["    " + x for x in init]
    lines.append(f"    for (long {T_VAR} = 0; {T_VAR} < {T}; {T_VAR}++) {{")
    step = list(body.body)
    roots = body.roots
    for j in range(ny):
        step += K.copy(at_t(o[nc + j], 1), roots[nc + j], ctx.tag())
    for r in range(len(cell.residuals)):
        step += K.copy(at_t(o[nc + ny + r], 0), roots[nc + ny + r], ctx.tag())
    for k in range(nc):
        step += K.copy(vnew[k], roots[k], ctx.tag())
    lines.append("        " + _outline(ctx, step, [], [(v.ctype, x) for v, x in zip(vcur + vnew, cur + new)]))
    lines += ["        " + x for x in _swap(cur, new, vcur)]
    lines.append("    }")
    for k in range(nc):
        lines += ["    " + x for x in K.copy(o[k], vcur[k], ctx.tag())]
    lines.append("}")
    ctx.loops.append(loop)
    return lines


def emit_scan_bwd(ctx, n: Node, out: K.View, *ins: K.View) -> list[str]:
    """The reverse loop t = T-1..0 per truncation chunk; its tuple holds the cotangents of the
    scan's inputs (None where not needed), in the order of the inputs."""
    cell: Cell = n.attrs["cell"]
    T, label = n.attrs["length"], (n.label or "d_scan").removeprefix("d_")
    truncated = n.attrs["truncate"] is not None
    k1, k2 = n.attrs["truncate"] or (T, T)
    nx, nc, ncap, ny = len(cell.xs_in), len(cell.carry_in), len(cell.captured), len(cell.ys)
    nin = nx + nc + ncap
    a, fwd, g = ins[:nin], ins[nin], ins[nin + 1:]
    need = n.attrs["need"]
    grads = [_private(ctx, i.shape, "float")[1] if need[k] else None for k, i in enumerate(n.inputs[:nin])]
    nk, norms = _private(ctx, (T,), "float")
    ctx.views[n.id] = Items(out.ptr, out.shape, out.strides, out.offset, out.ctype, tuple(grads))
    dc, nd, vdc, vnd, decl = _carry_ptrs(ctx, "b", cell)
    dy = [_private(ctx, y.shape, "float")[1] for y in cell.ys] if truncated else []
    bound = {p.id: at_t(a[i], 1) for i, p in enumerate(cell.xs_in)}
    bound.update({p.id: a[nx + nc + j] for j, p in enumerate(cell.captured)})
    bound.update({p.id: v for p, v in zip(cell.d_carry_out, vdc)})
    bound.update({p.id: (dy[j] if truncated else at_t(g[nc + j], 1)) for j, p in enumerate(cell.d_ys)})
    bound.update({p.id: at_t(fwd.items[nc + ny + r], 0) for r, p in enumerate(cell.saved)})
    # A weight the backward only multiplies by transposed (d_h = d_z W^T) is transposed once
    # before the loop: the per-step product then reads it row by row instead of repacking it.
    pre = []
    uses = _uses(cell.backward_roots())
    for jc, p in enumerate(cell.captured):
        u = uses.get(p.id, [])
        if len(p.shape) == 2 and None not in p.shape and u and all(
                c.op == "dot" and c.attrs["tb"] and c.inputs[1] is p and c.inputs[0] is not p for c in u):
            tmp = ctx.scratch((p.shape[1], p.shape[0]), "float")
            pre += K.copy(tmp, K.transpose_view(a[nx + nc + jc], (1, 0)), ctx.tag())
            bound[p.id] = K.transpose_view(tmp, (1, 0))
    wanted = [r if need[k] else None for k, r in enumerate((*cell.d_xs, *cell.d_carry_in, *cell.d_captured))]
    # A weight's gradient that is a product of two per-step values, sum_t a_t^T b_t, is one
    # product over the stacked steps after the loop (K = T*B instead of T products with K = B).
    # The side carrying the cotangent is accumulated: overlapping truncation windows visit a step twice.
    nch = -(-T // k1)
    windows = [(window_start(j * k1, min(j * k1 + k1, T) - 1, k1, k2), min(j * k1 + k1, T)) for j in range(nch)]
    found = gradient_products(cell, wanted[nx + nc:])  # {j: (the product, which side carries the cotangent)}
    hoist = {j: r for j, (r, _) in found.items()}
    cap_roots = [None if j in hoist else r for j, r in enumerate(wanted[nx + nc:])]
    pairs = [i for j in sorted(hoist) for i in hoist[j].inputs]
    body = CellBody(ctx, [*cell.d_carry_in, *wanted[:nx], *cap_roots, *cell.d_h, *pairs], bound)
    roots = body.roots
    d_cin, d_x, d_cap, d_h = roots[:nc], roots[nc:nc + nx], roots[nc + nx:nin], roots[nin:nin + nc]
    stacks, after = [], []  # per hoisted product: (stacked a, stacked b), and the product after the loop
    for q, j in enumerate(sorted(hoist)):
        sides = []
        for v, (node_, view) in enumerate(zip(hoist[j].inputs, roots[nin + nc + 2 * q:nin + nc + 2 * q + 2])):
            role = node_.attrs.get("role", ("",))
            if node_.op == "input" and role[0] == "saved":  # already stacked by the forward loop
                sides.append((fwd.items[nc + ny + role[1]], None, False))
            else:
                sides.append((_private(ctx, (T, *node_.shape), "float")[1], view, v == found[j][1]))
        stacks.append(sides)
        after += K.emit_dot(ctx, _Dot(), grads[nx + nc + j], sides[0][0], sides[1][0])
    tag = ctx.tag()
    lo, hi, w, j = f"{tag}lo", f"{tag}hi", f"{tag}w", f"{tag}j"
    lines = ["{", *["    " + d for d in decl], *["    " + x for x in pre]]
    for v in [*(x for x in grads if x is not None), norms]:
        lines += ["    " + x for x in K.fill(v, "0", ctx.tag())]
    if sum(hi - w for w, hi in windows) != T:  # a step no window visits adds nothing; one visited twice, both
        for stack, _, _ in (side for sides in stacks for side in sides if side[1] is not None):
            lines += ["    " + x for x in K.fill(stack, "0", ctx.tag())]
    lines += [f"    for (long {j} = {nch - 1}; {j} >= 0; {j}--) {{",
              f"        long {lo} = {j} * {k1};",
              f"        long {hi} = ({lo} + {k1} < {T} ? {lo} + {k1} : {T}) - 1;",
              # bptt.window_start: the chunk's last k2 steps, never more than k2 - k1 before it
              f"        long {w} = {lo} - {max(k2 - k1, 0)};",
              f"        if ({hi} - {k2 - 1} > {w}) {w} = {hi} - {k2 - 1};",
              f"        if ({w} < 0) {w} = 0;"]
    for k in range(nc):
        lines += [f"        if ({j} == {nch - 1})"] + ["        " + x for x in K.copy(vdc[k], g[k], ctx.tag())]
        lines += ["        else"] + ["        " + x for x in K.fill(vdc[k], "0", ctx.tag())]
    step = []
    for jy in range(len(dy)):
        step += [f"if ({T_VAR} >= {lo})"] + K.copy(dy[jy], at_t(g[nc + jy], 1), ctx.tag())
        step += ["else"] + K.fill(dy[jy], "0", ctx.tag())
    step += body.body
    step += ["{", "    double ss_ = 0;"]
    for h in d_h:
        step += ["    " + x for x in _sum_squares(h, ctx.tag())]
    step += [f"    if ({T_VAR} >= {lo}) {norms.ptr}[{T_VAR}] = (sb_real)sqrt(ss_);", "}"]
    for i, dx in enumerate(d_x):
        if dx is not None:
            step += _accumulate(ctx, at_t(grads[i], 1), dx)
    for jc, dp in enumerate(d_cap):
        if dp is not None:
            step += _accumulate(ctx, grads[nx + nc + jc], dp)
    for k, v in enumerate(d_cin):  # all new cotangents first: d_carry_in may read any dc (swaps)
        step += K.copy(vnd[k], v, ctx.tag()) if v is not None else K.fill(vnd[k], "0", ctx.tag())
    overlap = sum(hi - w for w, hi in windows) > T
    for stack, view, cot in (side for sides in stacks for side in sides if side[1] is not None):
        step += _accumulate(ctx, at_t(stack, 0), view) if cot and overlap else K.copy(at_t(stack, 0), view, ctx.tag())
    lines.append(f"        for (long {T_VAR} = {hi}; {T_VAR} >= {w}; {T_VAR}--) {{")
    lines.append("            " + _outline(ctx, step, [lo], [(v.ctype, x) for v, x in zip(vdc + vnd, dc + nd)]))
    lines += ["            " + x for x in _swap(dc, nd, vdc)]
    lines.append("        }")
    d_init = [x for k in range(nc) if need[nx + k] for x in _accumulate(ctx, grads[nx + k], vdc[k])]
    if d_init:
        lines += [f"        if ({w} == 0) {{"] + ["            " + x for x in d_init] + ["        }"]
    lines += ["    }", *["    " + x for x in after], "}"]
    ctx.loops.append(Loop(label, norms=nk))
    return lines


class _Dot:
    """The stacked product a^T b (what ``K.emit_dot`` reads of a dot node)."""

    attrs = {"ta": True, "tb": False}


def _uses(roots: list[Node]) -> dict[int, list[Node]]:
    """Node id -> the nodes of ``roots``' graph that read it."""
    out: dict[int, list[Node]] = {}
    for n in topo_order(roots):
        for i in n.inputs:
            out.setdefault(i.id, []).append(n)
    return out


def _outline(ctx, step: list[str], longs: list[str], ptrs: list[tuple[str, str]]) -> str:
    """Move one time step's C into its own function; returns the call.

    gcc's optimisation passes grow faster than linearly with a function's size: one
    function per loop body keeps -O3 compile time near the sum of the parts (a 2-layer
    ADBench LSTM step: 18 s as one function).
    """
    name = f"sb_{ctx.name}_{ctx.tag()}"
    params = ["void **a", "long B", f"long {T_VAR}", *[f"long {x}" for x in longs], *[f"{t} *{p}" for t, p in ptrs]]
    fn = ["#if defined(__GNUC__)", "#define SB_NOINLINE __attribute__((noinline))", "#else",
          "#define SB_NOINLINE", "#endif", f"static SB_NOINLINE void {name}({', '.join(params)}) {{"]
    fn += [f"    {_ctype(dtype)} *{cname} = ({_ctype(dtype)} *)a[{k}];"
           for k, (_, _, _, dtype, cname) in enumerate(ctx.arrays)]
    fn += ["    " + x for x in step] + ["    (void)a; (void)B;", "}", ""]
    ctx.helper_fns += fn
    return f"{name}(a, B, {T_VAR}{''.join(', ' + x for x in longs)}{''.join(', ' + p for _, p in ptrs)});"


def _sum_squares(h: K.View, tag: str) -> list[str]:
    """C adding the sum of squares of h to ``ss_`` (a double): ||dL/dh_t||, at every reverse step.

    One chain of additions in order cannot be vectorised (without -ffast-math) and waits ~4
    cycles an element: 8 us a step for an LSTM's h and c at B=32, H=128, ~5 % of its training step.
    Eight partial sums are independent lanes the compiler vectorises, in a fixed order.
    """
    if not h.is_contiguous():
        return K.loop_nest(h.shape, [h], lambda r: [f"ss_ += (double){r[0]} * {r[0]};"], tag)
    n, p = K.cexpr(K.size(h.shape)), f"{tag}q"
    return ["{",
            f"    const sb_real *restrict {p} = {h.base()};",
            f"    double {p}s[8] = {{0}};",
            f"    long {p}i = 0;",
            f"    for (; {p}i + 8 <= {n}; {p}i += 8)",
            f"        for (int {p}r = 0; {p}r < 8; {p}r++) {p}s[{p}r] += (double){p}[{p}i + {p}r] * {p}[{p}i + {p}r];",
            f"    for (; {p}i < {n}; {p}i++) {p}s[0] += (double){p}[{p}i] * {p}[{p}i];",
            f"    for (int {p}r = 0; {p}r < 8; {p}r++) ss_ += {p}s[{p}r];",
            "}"]


def _accumulate(ctx, dst: K.View, src: K.View) -> list[str]:
    return K.loop_nest(dst.shape, [dst, K.broadcast_view(src, dst.shape)], lambda r: [f"{r[0]} += {r[1]};"],
                       ctx.tag())


EMIT = {"scan": emit_scan, "scan_bwd": emit_scan_bwd}
VIEWS = {"scan_out": lambda n, x: x.items[n.attrs["index"]]}
