"""Cython emitters of the sequence ops: embedding gather and scatter-add, argmax, batched einsum.

A lookup copies one table row per id and its gradient adds one row back per id: C loops
over the ids, never a one-hot, so the cost does not grow with the vocabulary. Ids are
range-checked as they are read; an id out of range is recorded like a one-hot's label and
the Python wrapper raises the error naming the input (C without the GIL cannot raise).
A batched contraction is one BLAS gemm per batch element over strided views, with a dense
copy only where an operand's layout cannot be a BLAS matrix.
"""

from __future__ import annotations

from codegen.cython.kernels import (
    View,
    cexpr,
    copy,
    dense,
    expand_view,
    fill,
    loop_nest,
    matrix,
    mono,
    mul,
    size,
    transpose_view,
)
from symbp.ir import Node
from symbp.ops.sequence import groups, parse


def _rows_of(v: View, lead: tuple) -> View:
    """``v`` (lead + (width,)) as a view of shape ``lead`` on the first element of each row."""
    return v.with_(shape=tuple(lead), strides=tuple(v.strides[:-1]))


def emit_gather(ctx, n: Node, out: View, ids: View, table: View) -> list[str]:
    rows, width = n.inputs[1].shape
    check, q = ctx.label_check(n)
    t0, t1, o1 = cexpr(table.strides[0]), cexpr(table.strides[1]), cexpr(out.strides[-1])
    body = lambda r: [
        f"{{ const int64_t c_ = {r[1]}; sb_real *restrict o_ = &{r[0]};",
        f"  if (c_ >= 0 && c_ < {rows}) {{ const sb_real *restrict t_ = {table.base()} + c_*{t0};",
        f"    for (long d_ = 0; d_ < {width}; d_++) o_[d_*{o1}] = t_[d_*{t1}]; }}",
        f"  else {{ for (long d_ = 0; d_ < {width}; d_++) o_[d_*{o1}] = 0;",
        f"    if ({check}[0] == 0) {{ {check}[0] = {q}; {check}[1] = c_; }} }} }}"]
    return loop_nest(ids.shape, [_rows_of(out, ids.shape), ids], body, ctx.tag())


def emit_scatter_add(ctx, n: Node, out: View, g: View, ids: View) -> list[str]:
    # the lookup that reads these ids checked them in the forward pass of the same function;
    # here an id out of range is only skipped, so memory stays safe
    rows, width = n.shape
    o0, o1, g1 = cexpr(out.strides[0]), cexpr(out.strides[1]), cexpr(g.strides[-1])
    body = lambda r: [
        f"{{ const int64_t c_ = {r[1]}; const sb_real *restrict g_ = &{r[0]};",
        f"  if (c_ >= 0 && c_ < {rows}) {{ sb_real *restrict o_ = {out.base()} + c_*{o0};",
        f"    for (long d_ = 0; d_ < {width}; d_++) o_[d_*{o1}] += g_[d_*{g1}]; }} }}"]
    return fill(out, "0", ctx.tag()) + loop_nest(ids.shape, [_rows_of(g, ids.shape), ids], body, ctx.tag())


def emit_ctc_labels(ctx, n: Node, out: View, labels: View, lengths: View) -> list[str]:
    # the labels, copied; a blank (0) within an example's label length is recorded (it would
    # pass for padding), and the Python wrapper raises the error naming the input
    check, q = ctx.label_check(n)
    width = n.shape[1]
    s_lab, s_out = cexpr(labels.strides[-1]), cexpr(out.strides[-1])
    body = lambda r: [
        f"{{ const int64_t n_ = {r[0]}; const int64_t *l_ = &{r[1]}; int64_t *o_ = &{r[2]};",
        f"  for (long s_ = 0; s_ < {width}; s_++) {{ const int64_t c_ = l_[s_*{s_lab}]; o_[s_*{s_out}] = c_;",
        f"    if (c_ == 0 && s_ < n_ && {check}[0] == 0) {{ {check}[0] = {q}; {check}[1] = 0; }} }} }}"]
    return loop_nest(lengths.shape, [lengths, _rows_of(labels, lengths.shape), _rows_of(out, lengths.shape)],
                     body, ctx.tag())


def emit_argmax(ctx, n: Node, out: View, x: View) -> list[str]:
    axis = n.attrs["axis"]
    length, step = n.inputs[0].shape[axis], cexpr(x.strides[axis])
    first = x.with_(shape=out.shape, strides=tuple(s for k, s in enumerate(x.strides) if k != axis))
    # the first maximum, and the first NaN if there is one, as numpy.argmax
    body = lambda r: [
        f"{{ const sb_real *x_ = &{r[1]}; int64_t best_ = 0; sb_real bv_ = x_[0];",
        f"  for (long j_ = 1; j_ < {length}; j_++) {{ const sb_real v_ = x_[j_*{step}];",
        "    if (v_ > bv_ || (v_ != v_ && bv_ == bv_)) { bv_ = v_; best_ = j_; } }",
        f"  {r[0]} = best_; }}"]
    return loop_nest(out.shape, [out, first], body, ctx.tag())


def _operand(ctx, v: View, sub: str, batch: list, rows: list, cols: list, lines: list) -> tuple:
    """An operand laid out as (batch, rows, cols): (batch count, batch stride, per-element matrix
    view, its BLAS description). Strided views are used as they are when one batch letter and
    at most one column letter let BLAS read them; otherwise a dense copy is made first."""
    t = transpose_view(v, tuple(sub.index(c) for c in batch + rows + cols))
    if not cols:  # a contraction with nothing on this side: a column of width 1
        t = expand_view(t, (len(t.shape),))
    if not rows:
        t = expand_view(t, (len(batch),))
    nb = len(batch)
    per = t.with_(shape=t.shape[nb:], strides=t.strides[nb:])
    m = matrix(per, len(per.shape) - 1) if nb == 1 and len(cols) <= 1 else None
    if m is not None:
        return mono(None), t.strides[0], per, m
    tmp = ctx.scratch(t.shape, "float")
    lines += copy(tmp, t, ctx.tag())
    r = nb + max(len(rows), 1)  # the per-element axes: rows, then columns (both static)
    shape2 = (size(t.shape[nb:r])[0], size(t.shape[r:])[0])
    per = dense(tmp.ptr, shape2).with_(offset=tmp.offset)
    return size(t.shape[:nb]), (shape2[0] * shape2[1], 0), per, matrix(per, 1)


def emit_einsum(ctx, n: Node, out: View, x: View, y: View) -> list[str]:
    """Per batch element, C = A B by gemm (row-major C = A B is column-major Cᵀ = Bᵀ Aᵀ)."""
    a, b, res = parse(n.attrs["spec"])
    batch, rows, inner, cols = groups(n.attrs["spec"])
    lines: list[str] = []
    count, sa, pa, am = _operand(ctx, x, a, batch, rows, inner, lines)
    _, sb_, pb, bm = _operand(ctx, y, b, batch, inner, cols, lines)
    canon = batch + rows + cols
    target = out if canon == list(res) else ctx.scratch(tuple(n.shape[res.index(c)] for c in canon), "float")
    m_, k_, n_ = am[0], am[1], bm[1]
    sc = mul(m_, n_)  # the target is dense in (batch, rows, cols) order

    def op(mat):  # (trans flag, leading dimension) of mat^T in column-major terms
        _, _, rs, cs = mat
        return ("N", rs) if cs == (1, 0) else ("T", cs)

    (tb_flag, ldb), (ta_flag, lda) = op(bm), op(am)
    e = ctx.tag() + "e"
    lines += ["{",
              f"    int m_ = (int)({cexpr(n_)}), n_ = (int)({cexpr(m_)}), k_ = (int)({cexpr(k_)});",
              f"    int lda_ = (int)({cexpr(ldb)}), ldb_ = (int)({cexpr(lda)}), ldc_ = m_;",
              "    sb_real one_ = 1, zero_ = 0;",
              f"    for (long {e} = 0; {e} < {cexpr(count)}; {e}++)",
              f'        sb_gemm("{tb_flag}", "{ta_flag}", &m_, &n_, &k_, &one_, {pb.base()} + {e}*{cexpr(sb_)}, '
              f"&lda_, {pa.base()} + {e}*{cexpr(sa)}, &ldb_, &zero_, {target.base()} + {e}*{cexpr(sc)}, &ldc_);",
              "}"]
    if target is not out:
        lines += copy(transpose_view(out, tuple(res.index(c) for c in canon)), target, ctx.tag())
    return lines


EMIT = {"gather": emit_gather, "scatter_add": emit_scatter_add, "argmax": emit_argmax, "einsum": emit_einsum,
        "ctc_labels": emit_ctc_labels}
