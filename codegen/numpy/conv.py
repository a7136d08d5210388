"""NumPy emission of the convolution and pooling ops (semantics in ``symbp.ops.conv``).

Convolutions are im2col + one GEMM: kh*kw strided slice copies lay the patches of the
(padded) input out as a (B*Ho*Wo, kh*kw*C_in) matrix, and ``np.matmul`` writes the product
straight into the output buffer. The weight gradient is the same patch matrix transposed
times the output gradient; the input gradient is a GEMM to patch gradients, then col2im
(kh*kw strided adds). Pooling loops over the ph*pw window offsets, each a ufunc over a
strided slice of the whole batch: a few calls per layer, never a Python loop over pixels.
Max-pool backward walks the offsets in row-major order and hands each position whatever
gradient its window has not yet given away where it equals the max, so ties go to the
first maximum; ``max_pool2d_select`` (only used for second derivatives) takes ``argmax``
over ``sliding_window_view`` windows, which also returns the first maximum.

Temporaries (the padded input, the patch matrix, masks) are allocated by NumPy per call;
every op's result goes into its preallocated buffer (``out``). Names starting with ``_c``
are ours: the Namer never gives a user's node a name starting with '_'.
"""

from __future__ import annotations

SWV = "np.lib.stride_tricks.sliding_window_view"


def _span(n_out: int, stride: int, offset: str | int = 0) -> str:
    """The slice taking n_out elements with ``stride`` from ``offset``."""
    stop = f"{offset} + {stride * (n_out - 1) + 1}" if isinstance(offset, str) else offset + stride * (n_out - 1) + 1
    return f"{offset}:{stop}" + (f":{stride}" if stride != 1 else "")


def _im2col(n, x: str, kernel: tuple) -> list[str]:
    """Lines filling ``_ccols`` (B, Ho, Wo, kh, kw, C) with the patches of the padded ``x``.

    One strided slice copy per kernel offset: measured 2x faster than copying the 6-axis
    ``sliding_window_view`` in one go, whose innermost axes are only kh, kw, C long.
    """
    (sh, sw), pads = n.attrs["strides"], n.attrs["pads"]
    xn = n.inputs[0]
    ho, wo = (n.inputs[1].shape if n.op == "conv2d_weight_grad" else n.shape)[1:3]
    src = x
    lines = []
    if pads != ((0, 0), (0, 0)):
        src = "_cxp"
        lines.append(f"_cxp = np.pad({x}, ((0, 0), {pads[0]}, {pads[1]}, (0, 0)))")
    lines += [f"_ccols = np.empty(({x}.shape[0], {ho}, {wo}, {kernel[0]}, {kernel[1]}, {xn.shape[3]}), "
              f"dtype={x}.dtype)",
              f"for _ci in range({kernel[0]}):",
              f"    for _cj in range({kernel[1]}):",
              f"        _ccols[:, :, :, _ci, _cj] = {src}[:, {_span(ho, sh, '_ci')}, {_span(wo, sw, '_cj')}]"]
    return lines


def conv2d(n, out, x, w):
    kh, kw, cin, cout = n.inputs[1].shape
    k = kh * kw * cin
    return _im2col(n, x, (kh, kw)) + \
        [f"np.matmul(_ccols.reshape(-1, {k}), {w}.reshape({k}, {cout}), out={out}.reshape(-1, {cout}))"]


def conv2d_weight_grad(n, out, x, g):
    kh, kw, cin, cout = n.shape
    k = kh * kw * cin
    return _im2col(n, x, (kh, kw)) + \
        [f"np.matmul(_ccols.reshape(-1, {k}).T, {g}.reshape(-1, {cout}), out={out}.reshape({k}, {cout}))"]


def conv2d_input_grad(n, out, g, w):
    kh, kw, cin, cout = n.inputs[1].shape
    _, ho, wo, _ = n.inputs[0].shape
    (sh, sw), pads = n.attrs["strides"], n.attrs["pads"]
    h, wd = n.attrs["in_hw"]
    lines = [f"_ccols = np.matmul({g}.reshape(-1, {cout}), {w}.reshape({kh * kw * cin}, {cout}).T)"
             f".reshape(-1, {ho}, {wo}, {kh}, {kw}, {cin})"]
    if pads == ((0, 0), (0, 0)):
        target = out
        lines.append(f"{out}.fill(0.0)")
    else:
        target = "_cdx"
        hp, wp = h + sum(pads[0]), wd + sum(pads[1])
        lines.append(f"_cdx = np.zeros(({out}.shape[0], {hp}, {wp}, {cin}), dtype={out}.dtype)")
    # col2im: each kernel offset adds its patch gradients to a strided slice of dx.
    lines += [f"for _ci in range({kh}):",
              f"    for _cj in range({kw}):",
              f"        {target}[:, {_span(ho, sh, '_ci')}, {_span(wo, sw, '_cj')}] += _ccols[:, :, :, _ci, _cj]"]
    if target != out:
        (top, _), (left, _) = pads
        lines.append(f"np.copyto({out}, _cdx[:, {top}:{top + h}, {left}:{left + wd}])")
    return lines


def _window_loop(n, body: str | list[str], first: str | None = None, pooled: tuple | None = None) -> list[str]:
    """Lines looping over the window offsets (_ci, _cj); ``{win}`` in ``body`` is the slice of
    the input read at that offset by every window; ``pooled`` is (Ho, Wo) if not n's."""
    (ph, pw), (sh, sw) = n.attrs["window"], n.attrs["strides"]
    ho, wo = pooled or (n.shape[1:3] if n.op in ("max_pool2d", "avg_pool2d", "max_pool2d_select")
                        else n.inputs[-1].shape[1:3])
    win = f"{_span(ho, sh, '_ci')}, {_span(wo, sw, '_cj')}"
    lines = [] if first is None else [first.format(win0=f"{_span(ho, sh)}, {_span(wo, sw)}")]
    start = 0 if first is None else 1
    lines += [f"for _ck in range({start}, {ph * pw}):", f"    _ci, _cj = divmod(_ck, {pw})"]
    lines += [f"    {b.format(win=win)}" for b in ([body] if isinstance(body, str) else body)]
    return lines


def max_pool2d(n, out, x):
    return _window_loop(n, f"np.maximum({out}, {x}[:, {{win}}], out={out})", f"np.copyto({out}, {x}[:, {{win0}}])")


def avg_pool2d(n, out, x):
    ph, pw = n.attrs["window"]
    return _window_loop(n, f"np.add({out}, {x}[:, {{win}}], out={out})", f"np.copyto({out}, {x}[:, {{win0}}])") + \
        [f"np.multiply({out}, {1.0 / (ph * pw)!r}, out={out})"]


def avg_pool2d_grad(n, out, g):
    ph, pw = n.attrs["window"]
    return [f"{out}.fill(0.0)", f"_cg = {g} * {1.0 / (ph * pw)!r}"] + \
        _window_loop(n, f"{out}[:, {{win}}] += _cg")


def _argmax(n, x: str) -> str:
    """Index (p*pw + q) of the first maximum of each window of ``x``: shape (B, Ho, Wo, C)."""
    (ph, pw), (sh, sw) = n.attrs["window"], n.attrs["strides"]
    _, ho, wo, c = n.shape if n.op == "max_pool2d_select" else n.inputs[1].shape
    step = "" if (sh, sw) == (1, 1) else f"[:, ::{sh}, ::{sw}]"
    # np.argmax returns the first maximum; the window axes come last in row-major order.
    return f"{SWV}({x}, {(ph, pw)}, axis=(1, 2)){step}.reshape(-1, {ho}, {wo}, {c}, {ph * pw}).argmax(-1)"


def max_pool2d_grad(n, out, x, g):
    (ph, pw), (sh, sw) = n.attrs["window"], n.attrs["strides"]
    h, w = n.shape[1:3]
    _, ho, wo, _ = n.inputs[1].shape
    # Each window offset in row-major order takes what is left of g where it holds the max:
    # the first maximum gets all of it and later ties get exactly zero (rem - rem*1 == 0).
    tiles = (sh, sw) == (ph, pw) and ho * ph == h and wo * pw == w
    lines = [f"_cy = np.empty({g}.shape, dtype={g}.dtype)", *max_pool2d(n, "_cy", x),
             f"_crem = {g}.copy()", f"_ceq = np.empty({g}.shape, dtype=bool)"]
    if not tiles:  # rows outside every window, or windows that overlap: start from zero and add
        lines.append(f"{out}.fill(0.0)")
    body = [f"np.equal({x}[:, {{win}}], _cy, out=_ceq)"]
    if tiles:
        body += [f"np.multiply(_crem, _ceq, out={out}[:, {{win}}])",
                 f"np.subtract(_crem, {out}[:, {{win}}], out=_crem)"]
    else:
        body += ["_cd = _crem * _ceq", f"{out}[:, {{win}}] += _cd", "np.subtract(_crem, _cd, out=_crem)"]
    return lines + _window_loop(n, body, pooled=(ho, wo))


def max_pool2d_select(n, out, x, h):
    (ph, pw), (sh, sw) = n.attrs["window"], n.attrs["strides"]
    _, ho, wo, c = n.shape
    step = "" if (sh, sw) == (1, 1) else f"[:, ::{sh}, ::{sw}]"
    return [f"_cam = {_argmax(n, x)}",
            f"_chw = {SWV}({h}, {(ph, pw)}, axis=(1, 2)){step}.reshape(-1, {ho}, {wo}, {c}, {ph * pw})",
            f"np.copyto({out}, np.take_along_axis(_chw, _cam[..., None], -1)[..., 0])"]


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
