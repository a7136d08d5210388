"""C emission of the convolution and pooling ops (semantics in ``symbp.ops.conv``; NHWC layout,
weights (kh, kw, C_in, C_out)) for the Cython backend.

Direct loops: the innermost loop always runs over the contiguous channel axis, so gcc
vectorises it. The forward pass and the weight gradient read a zero-padded copy of the input
(``conv_direct.padded``, written as straight runs: gcc 12 miscompiles a per-pixel "zeros or
copy" branch at -O3 with AVX); the input gradient skips out-of-bounds taps. Pooling follows the
NumPy backend exactly: NaN wins a max, and a max-pool gradient goes to the *first* maximum
of its window in row-major order.
"""

from __future__ import annotations

from codegen.cython import conv_direct as D
from codegen.cython import kernels as K


def _dense(ctx, v: K.View, shape: tuple, lines: list[str]) -> str:
    """A C pointer to ``v`` laid out densely (copied to scratch when it is a strided view)."""
    if v.is_contiguous():
        return v.base()
    tmp = ctx.scratch(shape, "float")
    lines += K.copy(tmp, v, ctx.tag())
    return tmp.base()


def _geometry(n, x_shape, out_shape):
    (sh, sw) = n.attrs["strides"]
    (top, _), (left, _) = n.attrs.get("pads", ((0, 0), (0, 0)))
    _, h, w, c = x_shape
    _, ho, wo, _ = out_shape
    return h, w, c, ho, wo, sh, sw, top, left


def _windows(t: str, kh: int, kw: int, h, w, sh, sw, top, left, ho, wo) -> list[str]:
    """Opening lines of the loops over batch, output pixel and (valid) kernel offset."""
    return [f"for (long {t}b = 0; {t}b < B; {t}b++)",
            f"for (long {t}i = 0; {t}i < {ho}; {t}i++)",
            f"for (long {t}j = 0; {t}j < {wo}; {t}j++)",
            f"for (long {t}p = 0; {t}p < {kh}; {t}p++)",
            f"for (long {t}q = 0; {t}q < {kw}; {t}q++) {{",
            f"    const long {t}y = {t}i * {sh} + {t}p - {top}, {t}x = {t}j * {sw} + {t}q - {left};",
            f"    if ({t}y < 0 || {t}y >= {h} || {t}x < 0 || {t}x >= {w}) continue;",
            f"    const long {t}in = (({t}b * {h} + {t}y) * {w} + {t}x) * C_, "
            f"{t}out = (({t}b * {ho} + {t}i) * {wo} + {t}j) * O_;"]


def _im2col(ctx, n, x: K.View, lines: list[str], pooled: tuple) -> K.View:
    """Scratch (B, Ho, Wo, kh*kw*C) holding each output pixel's receptive field (zeros in the
    padding), so that the convolution and its weight gradient are single matrix products.
    Gathered from the zero-padded copy of x (codegen.cython.conv_direct.padded): straight
    copies of kw*C values, no bounds test per pixel (gcc 12 miscompiles that form at -O3 with
    AVX/AVX2/AVX-512, as it does the padded copy's old per-pixel branch)."""
    kh, kw = n.attrs["kernel"] if "kernel" in n.attrs else n.inputs[1].shape[:2]
    xp, hp, wp = D.padded(ctx, n, x, lines)
    _, _, c, ho, wo, sh, sw, _, _ = _geometry(n, n.inputs[0].shape, (None, *pooled, 0))
    cols = ctx.scratch((None, ho, wo, kh * kw * c), "float")
    t = ctx.tag()
    lines += [f"for (long {t}b = 0; {t}b < B; {t}b++)",
              f"for (long {t}i = 0; {t}i < {ho}; {t}i++)",
              f"for (long {t}j = 0; {t}j < {wo}; {t}j++)",
              f"for (long p = 0; p < {kh}; p++) {{",
              f"    sb_real *restrict dst = {cols.base()} + "
              f"((({t}b * {ho} + {t}i) * {wo} + {t}j) * {kh} + p) * {kw * c};",
              f"    const sb_real *restrict src = {xp} + (({t}b * {hp} + {t}i * {sh} + p) * {wp} + {t}j * {sw}) * {c};",
              f"    for (long k = 0; k < {kw * c}; k++) dst[k] = src[k];",
              "}"]
    return cols


class _Product:
    """Stands in for a ``dot`` node when a conv op reuses the gemm emitter."""

    def __init__(self, ta: bool):
        self.attrs = {"ta": ta, "tb": False}


def _direct_or_gemm(ctx, n, x, kernel_shape, lines: list[str], direct, gemm) -> list[str]:
    """Direct loops (codegen.cython.conv_direct) where the shape suits them and the compiler
    has vector extensions, else im2col + gemm; ``direct(xp, hp, wp)`` and ``gemm()`` return
    lines."""
    if not D.use_direct(ctx.itemsize, kernel_shape):
        return lines + gemm()
    body = ["#ifdef SB_MM"]
    xp, hp, wp = D.padded(ctx, n, x, body)
    body += direct(xp, hp, wp) + ["#else"] + gemm() + ["#endif"]
    return lines + body


def conv2d(ctx, n, out, x, wt):
    """im2col, then one product (B*Ho*Wo, kh*kw*C) x (kh*kw*C, O) straight into ``out``;
    or direct loops at small channel counts."""
    kh, kw, c, o = n.inputs[1].shape
    lines: list[str] = []
    wp_ = _dense(ctx, wt, n.inputs[1].shape, lines)

    def gemm():
        im: list[str] = []
        cols = _im2col(ctx, n, x, im, n.shape[1:3])
        return im + K.emit_dot(ctx, _Product(False), out, cols, K.dense(wp_, (kh * kw * c, o)))
    direct = lambda xp, hp, wp: D.conv2d(ctx, n, out, xp, hp, wp, wp_)  # noqa: E731
    return _direct_or_gemm(ctx, n, x, n.inputs[1].shape, lines, direct, gemm)


def conv2d_weight_grad(ctx, n, out, x, g):
    """The same patch matrix, transposed, times the output gradient; or direct loops."""
    kh, kw, c, o = n.shape
    lines: list[str] = []
    gp = _dense(ctx, g, n.inputs[1].shape, lines)

    def gemm():
        im: list[str] = []
        cols = _im2col(ctx, n, x, im, n.inputs[1].shape[1:3])
        gv = K.dense(gp, n.inputs[1].shape)
        return im + K.emit_dot(ctx, _Product(True), K.dense(out.base(), (kh * kw * c, o)), cols, gv)
    direct = lambda xp, hp, wp: D.weight_grad(ctx, n, out, xp, hp, wp, gp)  # noqa: E731
    return _direct_or_gemm(ctx, n, x, n.shape, lines, direct, gemm)


def conv2d_input_grad(ctx, n, out, g, wt):
    kh, kw, c, o = n.inputs[1].shape
    lines: list[str] = []
    gp, wp = _dense(ctx, g, n.inputs[0].shape, lines), _dense(ctx, wt, n.inputs[1].shape, lines)
    h, w, _, ho, wo, sh, sw, top, left = _geometry(n, n.shape, n.inputs[0].shape)
    t = ctx.tag()
    lines += K.fill(out, "0", ctx.tag())
    lines += ["{", f"const long C_ = {c}, O_ = {o};"] + _windows(t, kh, kw, h, w, sh, sw, top, left, ho, wo)
    lines += [f"    const sb_real *restrict gr = {gp} + {t}out;",
              f"    const sb_real *restrict wr = {wp} + ({t}p * {kw} + {t}q) * C_ * O_;",
              f"    sb_real *restrict dx = {out.base()} + {t}in;",
              "    for (long c = 0; c < C_; c++) {",
              "        sb_real s = 0;",
              "        for (long o = 0; o < O_; o++) s += gr[o] * wr[c * O_ + o];",
              "        dx[c] += s;", "    }", "}", "}"]
    return lines


def _pool(ctx, n, x: K.View, x_shape, pooled, lines) -> tuple:
    xp = _dense(ctx, x, x_shape, lines)
    (ph, pw) = n.attrs["window"]
    h, w, c, ho, wo, sh, sw, _, _ = _geometry(n, x_shape, pooled)
    return xp, ph, pw, h, w, c, ho, wo, sh, sw


def _argmax_lines(t, xp, ph, pw, h, w, ho, wo, sh, sw) -> list[str]:
    """Loops over every pooled element; inside, ``{t}k`` is the input offset of its window's
    first maximum (NaN wins, as in numpy) and ``{t}o`` the pooled element's offset."""
    return [f"for (long {t}b = 0; {t}b < B; {t}b++)",
            f"for (long {t}i = 0; {t}i < {ho}; {t}i++)",
            f"for (long {t}j = 0; {t}j < {wo}; {t}j++)",
            f"for (long {t}c = 0; {t}c < C_; {t}c++) {{",
            f"    const long {t}o = (({t}b * {ho} + {t}i) * {wo} + {t}j) * C_ + {t}c;",
            f"    long {t}k = (({t}b * {h} + {t}i * {sh}) * {w} + {t}j * {sw}) * C_ + {t}c;",
            f"    sb_real {t}m = {xp}[{t}k];",
            f"    for (long p = 0; p < {ph}; p++)",
            f"        for (long q = 0; q < {pw}; q++) {{",
            f"            const long k = (({t}b * {h} + {t}i * {sh} + p) * {w} + {t}j * {sw} + q) * C_ + {t}c;",
            f"            const sb_real v = {xp}[k];",
            f"            if (v > {t}m || (v != v && {t}m == {t}m)) {{ {t}m = v; {t}k = k; }}",
            "        }"]


def max_pool2d(ctx, n, out, x):
    lines: list[str] = []
    xp, ph, pw, h, w, c, ho, wo, sh, sw = _pool(ctx, n, x, n.inputs[0].shape, n.shape, lines)
    t = ctx.tag()
    return lines + ["{", f"const long C_ = {c};"] + _argmax_lines(t, xp, ph, pw, h, w, ho, wo, sh, sw) + \
        [f"    {out.base()}[{t}o] = {t}m;", "}", "}"]


def max_pool2d_grad(ctx, n, out, x, g):
    """Each window's gradient goes to its first maximum: every element of the window gets
    either the gradient or zero, written right after the search (the channel loop around
    both is the one gcc vectorises). When the windows tile the input (stride = window, no
    leftover rows) each element is written exactly once, so no zero fill is needed."""
    lines: list[str] = []
    xp, ph, pw, h, w, c, ho, wo, sh, sw = _pool(ctx, n, x, n.inputs[0].shape, n.inputs[1].shape, lines)
    gp = _dense(ctx, g, n.inputs[1].shape, lines)
    tiles = (sh, sw) == (ph, pw) and (ho * ph, wo * pw) == (h, w)
    if not tiles:
        lines += K.fill(out, "0", ctx.tag())
    t = ctx.tag()
    put = "=" if tiles else "+="
    return lines + ["{", f"const long C_ = {c};"] + _argmax_lines(t, xp, ph, pw, h, w, ho, wo, sh, sw) + [
        f"    const sb_real g_ = {gp}[{t}o];",
        f"    for (long p = 0; p < {ph}; p++)",
        f"        for (long q = 0; q < {pw}; q++) {{",
        f"            const long k = (({t}b * {h} + {t}i * {sh} + p) * {w} + {t}j * {sw} + q) * C_ + {t}c;",
        f"            {out.base()}[k] {put} k == {t}k ? g_ : 0;",
        "        }", "}", "}"]


def max_pool2d_select(ctx, n, out, x, hv):
    lines: list[str] = []
    xp, ph, pw, h, w, c, ho, wo, sh, sw = _pool(ctx, n, x, n.inputs[0].shape, n.shape, lines)
    hp = _dense(ctx, hv, n.inputs[1].shape, lines)
    t = ctx.tag()
    return lines + ["{", f"const long C_ = {c};"] + _argmax_lines(t, xp, ph, pw, h, w, ho, wo, sh, sw) + \
        [f"    {out.base()}[{t}o] = {hp}[{t}k];", "}", "}"]


def _avg_loops(t, ph, pw, h, w, ho, wo, sh, sw) -> list[str]:
    return [f"for (long {t}b = 0; {t}b < B; {t}b++)",
            f"for (long {t}i = 0; {t}i < {ho}; {t}i++)",
            f"for (long {t}j = 0; {t}j < {wo}; {t}j++)",
            f"for (long p = 0; p < {ph}; p++)",
            f"for (long q = 0; q < {pw}; q++) {{",
            f"    const long {t}in = (({t}b * {h} + {t}i * {sh} + p) * {w} + {t}j * {sw} + q) * C_;",
            f"    const long {t}out = (({t}b * {ho} + {t}i) * {wo} + {t}j) * C_;"]


def avg_pool2d(ctx, n, out, x):
    lines: list[str] = []
    xp, ph, pw, h, w, c, ho, wo, sh, sw = _pool(ctx, n, x, n.inputs[0].shape, n.shape, lines)
    t = ctx.tag()
    scale = ctx.printer.literal(1.0 / (ph * pw))
    lines += K.fill(out, "0", ctx.tag())
    lines += ["{", f"const long C_ = {c};"] + _avg_loops(t, ph, pw, h, w, ho, wo, sh, sw)
    lines += [f"    for (long c = 0; c < C_; c++) {out.base()}[{t}out + c] += {xp}[{t}in + c];", "}", "}"]
    return lines + K.loop_nest(out.shape, [out], lambda r: [f"{r[0]} *= {scale};"], ctx.tag())


def avg_pool2d_grad(ctx, n, out, g):
    lines: list[str] = []
    gp = _dense(ctx, g, n.inputs[0].shape, lines)
    (ph, pw) = n.attrs["window"]
    h, w, c, ho, wo, sh, sw, _, _ = _geometry(n, n.shape, n.inputs[0].shape)
    t = ctx.tag()
    scale = ctx.printer.literal(1.0 / (ph * pw))
    lines += K.fill(out, "0", ctx.tag())
    lines += ["{", f"const long C_ = {c};"] + _avg_loops(t, ph, pw, h, w, ho, wo, sh, sw)
    lines += [f"    for (long c = 0; c < C_; c++) {out.base()}[{t}in + c] += {gp}[{t}out + c] * {scale};", "}", "}"]
    return lines


EMIT = {
    "conv2d": conv2d,
    "conv2d_input_grad": conv2d_input_grad,
    "conv2d_weight_grad": conv2d_weight_grad,
    "max_pool2d": max_pool2d,
    "max_pool2d_grad": max_pool2d_grad,
    "max_pool2d_select": max_pool2d_select,
    "avg_pool2d": avg_pool2d,
    "avg_pool2d_grad": avg_pool2d_grad,
}
