"""NumPy emission of recurrences: the scan and its reverse loop as Python ``for`` loops.

Each loop is emitted as a nested function defined where the scan is computed, so the cell's
local names can never clash with the enclosing function's. The loop's label appears only as
repr() in code and comments, never inside a docstring or string literal. Its body is the cell graph (traced
and derived once, see ``symbp.ops.scan``) emitted by the same machinery as a whole model, so the
source size does not depend on T. Buffers are allocated once per batch size: carries,
per-step outputs (batch, T, ...), and the residuals the backward reads, saved as (T, batch, ...).

A weight's gradient that the reverse step computes as sum_t a_t^T b_t of two per-step values is
one product over the stacked steps after the loop (``symbp.ops.hoist.gradient_products``).

Another backend ports this by emitting the same two loops: everything it needs is on the
``symbp.ops.scan.Cell`` in ``node.attrs["cell"]`` (closed forward and backward graphs, whose
placeholders are bound here to loop variables), plus ``length``, ``truncate``, ``stateful`` and,
on ``scan_bwd``, ``need`` (which inputs want a cotangent). ``scan_out`` is a view of item k.

State, diagnostics and buffers live in the caller's workspace (``_ws``, the enclosing
function's last argument, which the loops see as a closure, as they see ``_mem``, its buffer
table for the batch size): ``_ws.state[label]`` holds the final carries of a stateful scan,
``_ws.grad_norms[label]`` the norm of dL/dh_t for every t after a backward pass (``derive``
makes each loop's label unique in its model). The loops replace ``state`` entries and never
write into them, so the runtime can put an old state back.
"""

from __future__ import annotations

from codegen.naming import Namer
from codegen.numpy.printer import Scratch
from symbp.autodiff.optimise import optimise
from symbp.ops.hoist import gradient_products
from symbp.ops.scan import Cell, scan_outputs


def _cell_code(roots: list, bound: dict, indent: str):
    """Emit ``roots`` of a closed cell graph; ``bound`` maps placeholder id -> code expression.

    Returns:
        (body lines, buffer specs, scratch specs, name of each root).
    """
    from codegen.numpy.emitter import Function

    live = [r for r in roots if r is not None]
    opt = optimise(live) if live else []
    namer = Namer()
    namer.names.update(bound)
    namer.taken.update(bound.values())  # generated temporaries must not shadow a loop variable
    scratch = Scratch()
    f = Function("cell", opt, namer, scratch)
    f.compile_body()
    it = iter(opt)
    names = [None if r is None else namer(next(it)) for r in roots]
    specs = [(s, "float") for _, s in scratch.specs()]
    unpack = [f"{', '.join(n for n, _ in scratch.specs())}, = _s"] if specs else []
    return [indent + line for line in f.body], f.sched.buffers, specs, unpack, names


def _swap(a: str, b: str, n: int) -> str:
    """``_a0, _b0, ... = _b0, _a0, ...``: the new values become current without a copy."""
    return f"{', '.join(f'{a}{k}, {b}{k}' for k in range(n))} = {', '.join(f'{b}{k}, {a}{k}' for k in range(n))}"


def _prologue(fn: str, key: str, shapes: list, bufs: list, specs: list, extra: list) -> list[str]:
    return [f"    _key = ({fn!r}, {key!r})",
            "    if _key not in _mem:",
            f"        _mem[_key] = (_alloc({shapes!r}, B), _alloc({bufs!r}, B), _alloc({specs!r}, B), "
            f"_alloc({extra!r}, B))",
            "    _o, _b, _s, _e = _mem[_key]"]


def emit_scan(n, out: str, *ins: str) -> list[str]:
    """The forward loop t = 0..T-1; binds ``out`` to the tuple of the scan's results."""
    cell: Cell = n.attrs["cell"]
    T, label = n.attrs["length"], n.label or "scan"
    nx, nc = len(cell.xs_in), len(cell.carry_in)
    args = [f"_x{i}" for i in range(nx)] + [f"_i{k}" for k in range(nc)] + [f"_p{j}" for j in range(len(cell.captured))]
    bound = {p.id: f"_x{i}[:, t]" for i, p in enumerate(cell.xs_in)}
    bound.update({p.id: f"_h{k}" for k, p in enumerate(cell.carry_in)})
    bound.update({p.id: f"_p{j}" for j, p in enumerate(cell.captured)})
    roots = cell.forward_roots()
    body, bufs, specs, unpack, names = _cell_code(roots, bound, "        ")
    outs = scan_outputs(cell, T)
    # Two buffers per carry: the step writes all new carries, then the pair swaps, so a cell
    # that shifts or swaps its carries ((a, b) -> (n, a)) never reads a carry already replaced.
    carries = [(c.shape, c.dtype) for c in cell.carry_in] * 2
    fn = f"_scan_{out}"
    lines = [f"def {fn}(B, {', '.join(args)}):",
             f"    # Scan {label!r}: the cell, traced once, run for t = 0..{T - 1}.",
             *_prologue("scan", out, outs, bufs, specs, carries),
             *["    " + u for u in unpack],
             f"    {''.join(f'_h{k}, ' for k in range(nc))}{''.join(f'_n{k}, ' for k in range(nc))}= _e"]
    if n.attrs["stateful"]:
        lines.append(f"    _st = _ws.state.get({label!r})")
        for k in range(nc):
            lines.append(f"    np.copyto(_h{k}, _st[{k}] if _st is not None and _st[{k}].shape == _h{k}.shape "
                         f"else _i{k})")
    else:
        lines += [f"    np.copyto(_h{k}, _i{k})" for k in range(nc)]
    lines.append(f"    for t in range({T}):")
    lines += body
    ny = len(cell.ys)
    for j in range(ny):
        lines.append(f"        _o[{nc + j}][:, t] = {names[nc + j]}")
    for r in range(len(cell.residuals)):
        lines.append(f"        _o[{nc + ny + r}][t] = {names[nc + ny + r]}")
    for k in range(nc):
        lines.append(f"        np.copyto(_n{k}, {names[k]})")
    lines.append(f"        {_swap('_h', '_n', nc)}")
    lines += [f"    np.copyto(_o[{k}], _h{k})" for k in range(nc)]
    if n.attrs["stateful"]:
        lines.append(f"    _ws.state[{label!r}] = ({''.join(f'_h{k}.copy(), ' for k in range(nc))})")
    lines += ["    return _o", f"{out} = {fn}(B, {', '.join(ins)})"]
    return lines


def emit_scan_bwd(n, out: str, *ins: str) -> list[str]:
    """The reverse loop t = T-1..0 (per truncation window); ``out`` holds the cotangents of
    the scan's inputs, in the order of its inputs."""
    cell: Cell = n.attrs["cell"]
    T, label = n.attrs["length"], (n.label or "d_scan").removeprefix("d_")
    k1, k2 = n.attrs["truncate"] or (T, T)
    nx, nc, ncap, ny = len(cell.xs_in), len(cell.carry_in), len(cell.captured), len(cell.ys)
    nin = nx + nc + ncap
    args = [f"_a{i}" for i in range(nin)] + ["_F"] + [f"_g{k}" for k in range(nc + ny)]
    truncated = n.attrs["truncate"] is not None
    bound = {p.id: f"_a{i}[:, t]" for i, p in enumerate(cell.xs_in)}
    bound.update({p.id: f"_a{nx + nc + j}" for j, p in enumerate(cell.captured)})
    bound.update({p.id: f"_dc{k}" for k, p in enumerate(cell.d_carry_out)})
    bound.update({p.id: (f"_dy{j}" if truncated else f"_g{nc + j}[:, t]") for j, p in enumerate(cell.d_ys)})
    off = nc + ny
    bound.update({p.id: f"_F[{off + r}][t]" for r, p in enumerate(cell.saved)})
    need = n.attrs["need"]
    wanted = [r if need[k] else None for k, r in enumerate((*cell.d_xs, *cell.d_carry_in, *cell.d_captured))]
    hoist = gradient_products(cell, wanted[nx + nc:])
    cap_roots = [None if j in hoist else r for j, r in enumerate(wanted[nx + nc:])]
    pairs = [i for j in sorted(hoist) for i in hoist[j][0].inputs]
    roots = [*cell.d_carry_in, *wanted[:nx], *cap_roots, *cell.d_h, *pairs]
    body, bufs, specs, unpack, names = _cell_code(roots, bound, "            ")
    d_cin, d_x = names[:nc], names[nc:nc + nx]
    d_cap, d_h = names[nc + nx:nin], names[nin:nin + nc]
    inputs = n.inputs[:nin]
    shapes = [(i.shape if need[k] else (), "float") for k, i in enumerate(inputs)] + [((T,), "float")]
    # a^T b summed over t (a weight's gradient): the two sides stacked over t, one product after
    # the loop. A side the forward loop saved is read there; the side carrying the cotangent is
    # accumulated, since overlapping truncation windows visit a step more than once.
    stacks, after = [], []
    for q, j in enumerate(sorted(hoist)):
        sides = []
        for v, (node_, name) in enumerate(zip(hoist[j][0].inputs, names[nin + nc + 2 * q:])):
            role = node_.attrs.get("role", ("",))
            if node_.op == "input" and role[0] == "saved":
                sides.append(f"_F[{off + role[1]}]")
                continue
            sides.append(f"_o[{len(shapes)}]")
            stacks.append((len(shapes), name, v == hoist[j][1]))
            shapes.append(((T, *node_.shape), "float"))
        a_, b_ = sides
        after.append(f"    _o[{nx + nc + j}] += {a_}.reshape(-1, {a_}.shape[-1]).T @ {b_}.reshape(-1, {b_}.shape[-1])")
    extra = [(c.shape, "float") for c in cell.carry_in] * 2
    extra += [(y.shape, "float") for y in cell.ys] if truncated else []
    fn = f"_scan_bwd_{out}"
    nch = -(-T // k1)
    lines = [f"def {fn}(B, {', '.join(args)}):",
             f"    # Reverse loop of scan {label!r}: the derived backward cell for t = {T - 1}..0"
             + (f", truncated: every {k1} steps back {k2} steps" if truncated else "") + ".",
             *_prologue("scan_bwd", out, shapes, bufs, specs, extra),
             *["    " + u for u in unpack],
             "    " + "".join(f"_dc{k}, " for k in range(nc)) + "".join(f"_nd{k}, " for k in range(nc))
             + "".join(f"_dy{j}, " for j in range(ny if truncated else 0)) + "= _e",
             "    for _a in _o:",
             "        _a.fill(0.0)",
             f"    _norms = _o[{nin}]",
             f"    for _j in range({nch - 1}, -1, -1):",
             f"        _lo = _j * {k1}",
             f"        _hi = min(_lo + {k1}, {T}) - 1",
             # bptt.window_start: the chunk's last k2 steps, never more than k2 - k1 before it
             f"        _w = max(0, _lo - {max(k2 - k1, 0)}, _hi - {k2 - 1})"]
    for k in range(nc):
        lines.append(f"        np.copyto(_dc{k}, _g{k}) if _j == {nch - 1} else _dc{k}.fill(0.0)")
    lines.append("        for t in range(_hi, _w - 1, -1):")
    for j in range(ny if truncated else 0):
        lines.append(f"            np.copyto(_dy{j}, _g{nc + j}[:, t]) if t >= _lo else _dy{j}.fill(0.0)")
    lines += body
    norm = " + ".join(f"float(np.vdot({h}, {h}))" for h in d_h)
    lines.append(f"            if t >= _lo: _norms[t] = math.sqrt({norm})")
    for i, dx in enumerate(d_x):
        if dx is not None:
            lines.append(f"            np.add(_o[{i}][:, t], {dx}, out=_o[{i}][:, t])")
    for j, dp in enumerate(d_cap):
        if dp is not None:
            lines.append(f"            np.add(_o[{nx + nc + j}], {dp}, out=_o[{nx + nc + j}])")
    for k, name, acc in stacks:
        lines.append(f"            np.add(_o[{k}][t], {name}, out=_o[{k}][t])" if acc else
                     f"            _o[{k}][t] = {name}")
    for k, dc in enumerate(d_cin):  # all new cotangents first: d_carry_in may read any _dc (swaps)
        lines.append(f"            np.copyto(_nd{k}, {dc})" if dc is not None else f"            _nd{k}.fill(0.0)")
    lines.append(f"            {_swap('_dc', '_nd', nc)}")
    d_init = [f"            np.add(_o[{nx + k}], _dc{k}, out=_o[{nx + k}])" for k in range(nc) if need[nx + k]]
    lines += ["        if _w == 0:", *d_init] if d_init else []
    lines += after
    lines += [f"    _ws.grad_norms[{label!r}] = _norms",
              "    return _o", f"{out} = {fn}(B, {', '.join(ins)})"]
    return lines


EMIT = {
    "scan": emit_scan,
    "scan_bwd": emit_scan_bwd,
    "scan_out": lambda n, x: f"{x}[{n.attrs['index']}]",
}
VIEWS = frozenset({"scan_out"})
