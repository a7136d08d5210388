"""Strided views and C loop nests for the Cython backend, and one emitter per structural op.

A tensor value in generated C is a :class:`View`: a base pointer plus a shape and strides.
Sizes and strides are *monomials* ``coef * B**k`` in the batch size B, so whether two
strides line up (a transpose folds into BLAS, two loops merge into one) is decided exactly
when the code is generated, not at run time. Transposes, slices, broadcasts and
reshapes of contiguous data are therefore free: they only change the View.
"""

from __future__ import annotations

from dataclasses import dataclass

from symbp.ir import Node

Mono = tuple  # (coef, power of B)


def mono(d) -> Mono:
    return (1, 1) if d is None else (int(d), 0)


def mul(a: Mono, b: Mono) -> Mono:
    return (a[0] * b[0], a[1] + b[1]) if a[0] and b[0] else (0, 0)


def cexpr(m: Mono) -> str:
    """A monomial as C text (B is the batch-size variable of every generated function)."""
    coef, k = m
    if coef == 0 or k == 0:
        return str(coef)
    return "*".join(([str(coef)] if coef != 1 else []) + ["B"] * k)


def contiguous(shape: tuple) -> tuple:
    out, s = [], (1, 0)
    for d in reversed(shape):
        out.append(s)
        s = mul(s, mono(d))
    return tuple(reversed(out))


def size(shape: tuple) -> Mono:
    s = (1, 0)
    for d in shape:
        s = mul(s, mono(d))
    return s


@dataclass(frozen=True)
class View:
    """Where a tensor's elements are: ``ptr[offset + sum(i_k * strides[k])]``.

    Attributes:
        ptr: C name of the base pointer.
        shape: static shape (None = batch size).
        strides: one monomial per axis.
        offset: C expression added to ptr ("" for none).
        ctype: "sb_real" or "int64_t".
    """

    ptr: str
    shape: tuple
    strides: tuple
    offset: str = ""
    ctype: str = "sb_real"

    def base(self) -> str:
        return f"({self.ptr} + {self.offset})" if self.offset else self.ptr

    def is_contiguous(self) -> bool:
        want = contiguous(self.shape)
        return all(d == 1 or s == w for d, s, w in zip(self.shape, self.strides, want))

    def with_(self, **kw) -> View:
        return View(**{**self.__dict__, **kw})


def dense(ptr: str, shape: tuple, ctype: str = "sb_real") -> View:
    return View(ptr, tuple(shape), contiguous(shape), "", ctype)


# -- views -------------------------------------------------------------------------------------

def transpose_view(v: View, perm: tuple) -> View:
    return v.with_(shape=tuple(v.shape[p] for p in perm), strides=tuple(v.strides[p] for p in perm))


def expand_view(v: View, axes: tuple) -> View:
    shape, strides = list(v.shape), list(v.strides)
    for a in sorted(axes):
        shape.insert(a, 1)
        strides.insert(a, (0, 0))
    return v.with_(shape=tuple(shape), strides=tuple(strides))


def broadcast_view(v: View, shape: tuple) -> View:
    """``v`` broadcast (NumPy rules, right-aligned) to ``shape``: stride 0 on stretched axes."""
    lead = len(shape) - len(v.shape)
    strides = [(0, 0)] * lead
    for d_in, d_out, s in zip(v.shape, shape[lead:], v.strides):
        strides.append((0, 0) if d_in == 1 and d_out != 1 else s)
    return v.with_(shape=tuple(shape), strides=tuple(strides))


def slice_view(v: View, index: tuple) -> View:
    shape, strides, offset = [], [], []
    for d, s, ix in zip(v.shape, v.strides, index):
        if isinstance(ix, int):
            if ix:
                offset.append(cexpr(mul((ix, 0), s)))
            continue
        start, stop, step = ix
        if d is None:  # the batch axis is always taken whole
            shape.append(d)
            strides.append(s)
            continue
        if start:
            offset.append(cexpr(mul((start, 0), s)))
        shape.append(len(range(start, stop, step)))
        strides.append(mul((step, 0), s))
    off = " + ".join([v.offset] * bool(v.offset) + [o for o in offset if o != "0"])
    return v.with_(shape=tuple(shape), strides=tuple(strides), offset=off)


# -- loop nests --------------------------------------------------------------------------------

def _axes(shape: tuple, strides: list[tuple]) -> list[tuple]:
    """Axes to loop over as (size, [stride per operand]), size-1 axes dropped and axes that
    every operand walks contiguously merged into one."""
    axes = [(mono(d), [s[k] for s in strides]) for k, d in enumerate(shape) if d != 1]
    merged: list[tuple] = []
    for d, ss in axes:
        if merged:
            pd, pss = merged[-1]
            if all(p == mul(s, d) for p, s in zip(pss, ss)):
                merged[-1] = (mul(pd, d), ss)
                continue
        merged.append((d, ss))
    return merged


def loop_nest(shape: tuple, views: list[View], body, tag: str) -> list[str]:
    """C loops over ``shape`` visiting each operand view element by element.

    Args:
        shape: the iteration space (each view has this shape, broadcast where needed).
        views: operands; ``body(refs)`` receives one C lvalue per operand.
        body: returns the C statements of the innermost loop.
        tag: unique prefix for the loop's variables.
    Returns:
        Lines of C, wrapped in a block.
    """
    axes = _axes(shape, [list(v.strides) for v in views])
    lines = ["{"]
    ptrs = []
    for k, v in enumerate(views):
        name = f"{tag}p{k}"
        lines.append(f"    {v.ctype} *restrict {name}_0 = {v.base()};")
        ptrs.append(name)
    depth = len(axes)
    ind = "    "
    for level, (d, ss) in enumerate(axes[:-1]):
        i = f"{tag}i{level}"
        lines.append(f"{ind}for (long {i} = 0; {i} < {cexpr(d)}; {i}++) {{")
        ind += "    "
        for p, s in zip(ptrs, ss):
            lines.append(f"{ind}{views[ptrs.index(p)].ctype} *restrict {p}_{level + 1} = {p}_{level} + {i}*{cexpr(s)};")
    if depth:
        d, ss = axes[-1]
        i = f"{tag}i{depth - 1}"
        if depth > 1 and d[1] == 0 and d[0] <= 16:
            # gcc would unroll a short inner loop completely and vectorise the outer one, with
            # strided (gathered) accesses: 2x slower on a (B*36, 16) bias + ReLU than one
            # vector per row
            lines.append(f"{ind}#pragma GCC unroll 1")
        lines.append(f"{ind}for (long {i} = 0; {i} < {cexpr(d)}; {i}++) {{")
        refs = [f"{p}_{depth - 1}[{_index(i, s)}]" for p, s in zip(ptrs, ss)]
        ind += "    "
    else:
        refs = [f"{p}_0[0]" for p in ptrs]
    lines += [ind + line for line in body(refs)]
    for _ in range(depth):
        ind = ind[:-4]
        lines.append(ind + "}")
    lines.append("}")
    return lines


def _index(i: str, s: Mono) -> str:
    if s == (0, 0):
        return "0"
    if s == (1, 0):
        return i
    return f"{i}*{cexpr(s)}"


def copy(dst: View, src: View, tag: str) -> list[str]:
    return loop_nest(dst.shape, [dst, broadcast_view(src, dst.shape)], lambda r: [f"{r[0]} = {r[1]};"], tag)


def fill(dst: View, value: str, tag: str) -> list[str]:
    return loop_nest(dst.shape, [dst], lambda r: [f"{r[0]} = {value};"], tag)


# -- structural ops: (ctx, node, out view, input views) -> C lines -------------------------------

def matrix(v: View, rows_axes: int) -> tuple | None:
    """``v`` as a BLAS matrix: (rows, cols, row stride, col stride), the first ``rows_axes``
    axes merged into rows; None when its strides do not allow it (then it is copied)."""
    if len(v.shape) != rows_axes + 1:
        return None
    row_axes = _axes(v.shape[:rows_axes], [list(v.strides[:rows_axes])])
    rows = size(v.shape[:rows_axes])
    if len(row_axes) > 1:
        return None
    cols, cs = mono(v.shape[-1]), v.strides[-1]
    rs = row_axes[0][1][0] if row_axes else mul(cols, cs if cs != (0, 0) else (1, 0))
    if cols == (1, 0):
        cs = (1, 0) if rs != (1, 0) else mul(rows, (1, 0))
    if rows == (1, 0):
        rs = mul(cols, (1, 0)) if cs == (1, 0) else (1, 0)
    if cs == (1, 0) and rs != (0, 0):
        return rows, cols, rs, cs
    if rs == (1, 0) and cs != (0, 0):
        return rows, cols, rs, cs
    return None


def emit_dot(ctx, n: Node, out: View, a: View, b: View) -> list[str]:
    """One gemm call; transposes (the node's ta/tb flags and transposed views) become
    BLAS transpose arguments. Row-major C = A B is column-major C^T = B^T A^T."""
    ta, tb = n.attrs["ta"], n.attrs["tb"]
    lines: list[str] = []

    def as_matrix(v: View, rows_axes: int):
        m = matrix(v, rows_axes)
        if m is None:  # broadcast or gathered strides: make a dense copy first
            tmp = ctx.scratch(v.shape, "float")
            lines.extend(copy(tmp, v, ctx.tag()))
            m = matrix(tmp, rows_axes)
            v = tmp
        return v, m

    a, am = as_matrix(a, len(a.shape) - 1)
    b, bm = as_matrix(b, len(b.shape) - 1)
    if ta:
        am = (am[1], am[0], am[3], am[2])
    if tb:
        bm = (bm[1], bm[0], bm[3], bm[2])
    m_, k_, n_ = am[0], am[1], bm[1]

    def op(mat):  # (trans flag, leading dimension) of mat^T in column-major terms
        rows, cols, rs, cs = mat
        return ("N", rs) if cs == (1, 0) else ("T", cs)

    (tb_flag, ldb), (ta_flag, lda) = op(bm), op(am)
    nr = 2 * 64 // ctx.itemsize
    if n_[1] == 0 and n_[0] % nr == 0:
        # static width: symbp's own kernel (see sb_mm); BLAS where the C compiler has no
        # vector extensions
        lines.append("#ifdef SB_MM")
        lines.append(f"if (sb_mm({cexpr(m_)}, {cexpr(n_)}, {cexpr(k_)}, {a.base()}, {cexpr(am[2])}, {cexpr(am[3])}, "
                     f"{b.base()}, {cexpr(bm[2])}, {cexpr(bm[3])}, {out.base()}))")
        lines.append("#endif")
    lines.append("{")
    lines.append(f"    int m_ = (int)({cexpr(n_)}), n_ = (int)({cexpr(m_)}), k_ = (int)({cexpr(k_)});")
    lines.append(f"    int lda_ = (int)({cexpr(ldb)}), ldb_ = (int)({cexpr(lda)}), ldc_ = m_;")
    lines.append("    sb_real one_ = 1, zero_ = 0;")
    lines.append(f'    sb_gemm("{tb_flag}", "{ta_flag}", &m_, &n_, &k_, &one_, {b.base()}, &lda_, '
                 f"{a.base()}, &ldb_, &zero_, {out.base()}, &ldc_);")
    lines.append("}")
    return lines


def _sum_rows(out: View, x: View, nlead: int) -> list[str] | None:
    """A sum over the leading axes of a contiguous x into K static columns (a bias gradient),
    or None when that is not the case. Four rows at a time into register accumulators: the
    generic nest below adds into ``out`` in memory, one latency-bound add chain per column."""
    kept = x.shape[nlead:]
    if not x.is_contiguous() or None in kept or not kept or not out.is_contiguous():
        return None
    k = 1
    for d in kept:
        k *= d
    if k > 64:
        return None
    return ["{",
            f"    sb_real acc_[4][{k}] = {{{{0}}}};",
            f"    const sb_real *restrict x_ = {x.base()};",
            f"    const long rows_ = {cexpr(size(x.shape[:nlead]))};",
            "    long r_ = 0;",
            "    for (; r_ + 4 <= rows_; r_ += 4)",
            f"        for (int u = 0; u < 4; u++) for (long c = 0; c < {k}; c++) acc_[u][c] += x_[(r_ + u) * {k} + c];",
            f"    for (; r_ < rows_; r_++) for (long c = 0; c < {k}; c++) acc_[0][c] += x_[r_ * {k} + c];",
            f"    for (long c = 0; c < {k}; c++)",
            f"        {out.base()}[c] = (acc_[0][c] + acc_[1][c]) + (acc_[2][c] + acc_[3][c]);",
            "}"]


def emit_reduce(kind: str):
    def emit(ctx, n: Node, out: View, x: View) -> list[str]:
        axes = n.attrs["axes"]
        if kind == "sum" and tuple(axes) == tuple(range(len(axes))) and axes:
            fast = _sum_rows(out, x, len(axes))
            if fast is not None:
                return fast
        keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        acc = dense(out.ptr, keep_shape).with_(offset=out.offset)
        acc = acc.with_(strides=tuple((0, 0) if i in axes else s for i, s in enumerate(acc.strides)))
        init = "0" if kind == "sum" else "-INFINITY"
        body = ((lambda r: [f"{r[0]} += {r[1]};"]) if kind == "sum" else
                # NaN wins, as in numpy.max
                (lambda r: [f"{{ sb_real v_ = {r[1]}; if (v_ > {r[0]} || v_ != v_) {r[0]} = v_; }}"]))
        return fill(out, init, ctx.tag()) + loop_nest(x.shape, [acc, x], body, ctx.tag())
    return emit


def emit_size(ctx, n: Node, out: View, x: View) -> list[str]:
    count = (1, 0)
    for a in n.attrs["axes"]:
        count = mul(count, mono(n.inputs[0].shape[a]))
    return [f"{out.base()}[0] = (sb_real)({cexpr(count)});"]


def emit_onehot(ctx, n: Node, out: View, y: View) -> list[str]:
    depth = n.attrs["depth"]
    rows = dense(out.ptr, y.shape).with_(offset=out.offset, strides=tuple(mul(s, (depth, 0))
                                                                          for s in contiguous(y.shape)))
    # Labels are checked here, where they are read (also inside loops and after concatenation):
    # the first one out of range is recorded with this check's number, and the Python wrapper
    # raises the error naming the input (C without the GIL cannot raise).
    check, q = ctx.label_check(n)
    body = lambda r: [f"{{ int64_t c_ = {r[1]}; if (c_ >= 0 && c_ < {depth}) (&{r[0]})[c_] = 1; "
                      f"else if ({check}[0] == 0) {{ {check}[0] = {q}; {check}[1] = c_; }} }}"]
    return fill(out, "0", ctx.tag()) + loop_nest(y.shape, [rows, y], body, ctx.tag())


def emit_unslice(ctx, n: Node, out: View, g: View) -> list[str]:
    return fill(out, "0", ctx.tag()) + copy(slice_view(out, n.attrs["index"]), g, ctx.tag())


def emit_concat(ctx, n: Node, out: View, *xs: View) -> list[str]:
    axis, start, lines = n.attrs["axis"], 0, []
    for x, node in zip(xs, n.inputs):
        stop = start + node.shape[axis]
        index = tuple((start, stop, 1) if k == axis else (0, 0, 1) if d is None else (0, d, 1)
                      for k, d in enumerate(n.shape))
        lines += copy(slice_view(out, index), x, ctx.tag())
        start = stop
    return lines


def emit_dropout_mask(ctx, n: Node, out: View) -> list[str]:
    """A dropout mask, bit for bit what ``symbp.ops.random`` specifies (``sb_dropout_mask`` in
    ``printer.PHILOX``); (seed, step) arrive in four io slots as 32-bit halves (exact in a double)."""
    from symbp.ops.random import keep_threshold

    k, rate = ctx.rng_slot(), n.attrs["rate"]
    return [f"sb_dropout_mask({out.base()}, {cexpr(size(n.shape))}, (uint64_t)io[{k}] | ((uint64_t)io[{k + 1}] << 32), "
            f"(uint64_t)io[{k + 2}] | ((uint64_t)io[{k + 3}] << 32), {n.attrs['stream']}ull, "
            f"{keep_threshold(rate)}u, (sb_real){1.0 / (1.0 - rate)!r});"]


EMIT = {
    "dot": emit_dot,
    "sum": emit_reduce("sum"),
    "max": emit_reduce("max"),
    "size": emit_size,
    "onehot": emit_onehot,
    "unslice": emit_unslice,
    "concat": emit_concat,
    "dropout_mask": emit_dropout_mask,
    "const": lambda ctx, n, out: fill(out, ctx.printer.literal(n.attrs["value"]), ctx.tag()),
}
"""Ops that compute into their own buffer. Elementwise ops are printed from their formula."""

VIEWS = {
    "transpose": lambda n, x: transpose_view(x, n.attrs["perm"]),
    "expand_dims": lambda n, x: expand_view(x, n.attrs["axes"]),
    "broadcast_like": lambda n, g: broadcast_view(expand_view(g, n.attrs["axes"]), n.shape),
    "slice": lambda n, x: slice_view(x, n.attrs["index"]),
    "stop_gradient": lambda n, x: x,
    "batch_stat": lambda n, x, running: x,  # the training form; inference mode reads the running value
    "reshape": lambda n, x: dense(x.ptr, n.shape, x.ctype).with_(offset=x.offset),  # contiguous x only
}
"""Ops that only re-describe their first input's storage (no code, no buffer)."""
