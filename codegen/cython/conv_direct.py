"""Direct, register-blocked C for conv2d and its weight gradient at small channel counts.

im2col + one product pays for a patch matrix kh*kw times the size of the input, and a
product whose inner dimension is kh*kw*C_in (9 for the 8x8x1 benchmark) keeps a gemm kernel
mostly in its edge cases. With the kernel laid out (kh, kw, C_in, C_out), C_out is
contiguous, so one ``sb_vec`` (64 bytes: 16 float32 or 8 float64) holds a weight row's
C_out values and these loops multiply it by broadcast input scalars:

* conv2d keeps a block of JB output pixels of a row times C_out in registers (JB independent
  FMA chains hide the FMA latency) and streams the kh*kw*C_in weight rows through them;
* the weight gradient keeps RB rows (p, q, c) of dW in registers and streams the output
  pixels through them: each pixel's gradient vector is loaded once per block of rows.

Which form a node gets is decided here, from its static shape (``use_direct``). Measured on
this machine's Zen 4 at batch 64 (benchmarks/README.md): direct is 1.2-3x faster up to
3x3x16 patches and two vectors of C_out, even at four vectors, and slower than im2col + gemm
(OpenBLAS) for the forward pass from 3x3x32 patches on. Padding becomes a
zero-padded copy of the input, so the inner loops have no bounds tests. Sums run in a
different order than numpy's, so results agree to rounding (tests/test_cython.py).
These loops need GCC/Clang vector extensions (``SB_MM`` in codegen.cython.printer); every
call site keeps the im2col + gemm form under ``#else`` for other compilers.
"""

from __future__ import annotations

from codegen.cython import kernels as K

VEC_BYTES = 64
"""Bytes in one ``sb_vec`` (codegen.cython.printer)."""
MAX_NV = 2
"""Most vectors of C_out for the direct form (accumulators must stay in registers)."""
MAX_ROWS = 160
"""Most kh*kw*C_in rows for the direct form: im2col + gemm won from 288 rows (3x3x32) on."""
ACC_REGS = 12
"""Accumulator vectors per block: of 32 AVX-512 registers (16 AVX2 ones holding half an
sb_vec each, where gcc spills a few), the rest hold weights and addresses."""


def use_direct(itemsize: int, kernel_shape: tuple) -> bool:
    """Whether a convolution with this (kh, kw, C_in, C_out) kernel is emitted as direct loops."""
    kh, kw, c, o = kernel_shape
    vw = VEC_BYTES // itemsize
    return o % vw == 0 and o // vw <= MAX_NV and kh * kw * c <= MAX_ROWS


def padded(ctx, n, x: K.View, lines: list[str]) -> tuple[str, int, int]:
    """A pointer to x zero-padded by the node's pads (x itself when there are none), and the
    padded height and width."""
    _, h, w, c = n.inputs[0].shape
    (top, bottom), (left, right) = n.attrs.get("pads", ((0, 0), (0, 0)))
    hp, wp = h + top + bottom, w + left + right
    if (hp, wp) == (h, w) and x.is_contiguous():
        return x.base(), h, w
    dst = ctx.scratch((None, hp, wp, c), "float")
    if not x.is_contiguous():
        tmp = ctx.scratch(n.inputs[0].shape, "float")
        lines += K.copy(tmp, x, ctx.tag())
        x = tmp
    # Straight runs of zeros and of copied rows, no per-pixel branch: gcc 12 at -O3 with AVX,
    # AVX2 or AVX-512 turns a per-pixel "zero or copy" into masked vector loads with the wrong
    # masks (a compiler bug: wrong padded input, so wrong results, at the default flags).
    t = ctx.tag()
    row, pad_row = w * c, wp * c
    lines += [f"for (long {t}b = 0; {t}b < B; {t}b++) {{",
              f"    sb_real *restrict d_ = {dst.base()} + {t}b * {hp * pad_row};",
              f"    const sb_real *restrict s_ = {x.base()} + {t}b * {h * row};",
              f"    for (long k = 0; k < {top * pad_row}; k++) d_[k] = 0;",
              f"    for (long {t}y = 0; {t}y < {h}; {t}y++) {{",
              f"        sb_real *r_ = d_ + ({t}y + {top}) * {pad_row};",
              f"        for (long k = 0; k < {left * c}; k++) r_[k] = 0;",
              f"        for (long k = 0; k < {row}; k++) r_[{left * c} + k] = s_[{t}y * {row} + k];",
              f"        for (long k = 0; k < {right * c}; k++) r_[{(left + w) * c} + k] = 0;",
              "    }",
              f"    for (long k = 0; k < {bottom * pad_row}; k++) d_[{(top + h) * pad_row} + k] = 0;",
              "}"]
    return dst.base(), hp, wp


def _vec(ptr: str, k: int, vw: int) -> str:
    return f"*(const sb_vec *)({ptr} + {k * vw})" if k else f"*(const sb_vec *)({ptr})"


def conv2d(ctx, n, out: K.View, xp: str, hp: int, wp: int, wt: str) -> list[str]:
    """y[b,i,j,:] for JB pixels j at once: acc[u] += xp[.., (j+u)*sw + q, c] * w[p, q, c, :]."""
    kh, kw, c, o = n.inputs[1].shape
    _, ho, wo, _ = n.shape
    sh, sw = n.attrs["strides"]
    vw = VEC_BYTES // ctx.itemsize
    nv = o // vw
    jb = max(1, min(wo, 6 // nv))
    t = ctx.tag()

    def block(j: str, width: int) -> list[str]:
        body = [f"sb_vec acc_[{width}][{nv}];",
                f"for (int u = 0; u < {width}; u++) for (int v = 0; v < {nv}; v++) acc_[u][v] = (sb_vec){{0}};",
                f"for (long p = 0; p < {kh}; p++)",
                f"for (long q = 0; q < {kw}; q++)",
                f"for (long c = 0; c < {c}; c++) {{",
                f"    const sb_real *xs_ = xr_ + (p * {wp} + {j} * {sw} + q) * {c} + c;",
                f"    const sb_real *wr_ = {wt} + ((p * {kw} + q) * {c} + c) * {o};"]
        body += [f"    const sb_vec w{v}_ = {_vec('wr_', v, vw)};" for v in range(nv)]
        body += [f"    for (int u = 0; u < {width}; u++) {{",
                 f"        const sb_real s_ = xs_[u * {sw * c}];"]
        body += [f"        acc_[u][{v}] += s_ * w{v}_;" for v in range(nv)]
        body += ["    }", "}",
                 f"for (int u = 0; u < {width}; u++) for (int v = 0; v < {nv}; v++)",
                 f"    *(sb_vec *)(yr_ + ({j} + u) * {o} + v * {vw}) = acc_[u][v];"]
        return ["{"] + ["    " + line for line in body] + ["}"]

    full = wo - wo % jb
    lines = [f"for (long {t}b = 0; {t}b < B; {t}b++)",
             f"for (long {t}i = 0; {t}i < {ho}; {t}i++) {{",
             f"    const sb_real *restrict xr_ = {xp} + ({t}b * {hp} + {t}i * {sh}) * {wp} * {c};",
             f"    sb_real *restrict yr_ = {out.base()} + ({t}b * {ho} + {t}i) * {wo} * {o};"]
    if full:
        lines += [f"    for (long {t}j = 0; {t}j < {full}; {t}j += {jb})"]
        lines += ["    " + line for line in block(f"{t}j", jb)]
    if wo % jb:
        lines += ["    " + line for line in block(str(full), wo % jb)]
    return lines + ["}"]


def weight_grad(ctx, n, out: K.View, xp: str, hp: int, wp: int, g: str) -> list[str]:
    """dw[p,q,c,:] = sum over pixels of xp[.., i*sh+p, j*sw+q, c] * g[b,i,j,:], a block of
    rows (p, q, c) at a time; each row's input offset from the pixel's corner is a constant."""
    kh, kw, c, o = n.shape
    _, ho, wo, _ = n.inputs[1].shape
    sh, sw = n.attrs["strides"]
    vw = VEC_BYTES // ctx.itemsize
    nv = o // vw
    rows = [(p, q, cc) for p in range(kh) for q in range(kw) for cc in range(c)]
    per = max(1, ACC_REGS // nv)
    nblocks = -(-len(rows) // per)
    size = -(-len(rows) // nblocks)  # even blocks: a short last block would be latency-bound
    t = ctx.tag()
    lines: list[str] = []
    for start in range(0, len(rows), size):
        block = rows[start:start + size]
        body = [f"sb_vec acc_[{len(block)}][{nv}];",
                f"for (int r = 0; r < {len(block)}; r++) for (int v = 0; v < {nv}; v++) acc_[r][v] = (sb_vec){{0}};",
                f"for (long {t}b = 0; {t}b < B; {t}b++)",
                f"for (long {t}i = 0; {t}i < {ho}; {t}i++)",
                f"for (long {t}j = 0; {t}j < {wo}; {t}j++) {{",
                f"    const sb_real *restrict xs_ = {xp} + (({t}b * {hp} + {t}i * {sh}) * {wp} + {t}j * {sw}) * {c};",
                f"    const sb_real *restrict gr_ = {g} + (({t}b * {ho} + {t}i) * {wo} + {t}j) * {o};"]
        body += [f"    const sb_vec g{v}_ = {_vec('gr_', v, vw)};" for v in range(nv)]
        for r, (p, q, cc) in enumerate(block):
            off = (p * wp + q) * c + cc
            body += [f"    acc_[{r}][{v}] += xs_[{off}] * g{v}_;" for v in range(nv)]
        body += ["}"]
        for r, (p, q, cc) in enumerate(block):
            row = ((p * kw + q) * c + cc) * o
            body += [f"*(sb_vec *)({out.base()} + {row + v * vw}) = acc_[{r}][{v}];" for v in range(nv)]
        lines += ["{"] + ["    " + line for line in body] + ["}"]
    return lines
