"""Convolution and pooling ops, channels last (NHWC).

Layout. Images are (batch, H, W, C) and kernels (kh, kw, C_in, C_out). Channels last keeps
the feature axis last, as for every other symbp tensor: a bias (C_out,) broadcasts with a
plain add, ``Dense`` after ``Flatten`` needs no transpose, and im2col turns a convolution
into one (B*Ho*Wo, kh*kw*C_in) @ (kh*kw*C_in, C_out) product with the existing ``dot``. The
kernel layout makes ``symbp.init``'s fans come out right (fan_in = kh*kw*C_in).

Semantics, exactly as every backend must implement them (xp is x zero-padded by
``pads = ((top, bottom), (left, right))``; sh, sw are the strides; all sums are over every
index for which the subscripts are in range):

  conv2d(x, w)                 y[b,i,j,o] = sum_{p,q,c} xp[b, i*sh+p, j*sw+q, c] * w[p,q,c,o]
                               Ho = (H + top + bottom - kh) // sh + 1 (likewise Wo)
  conv2d_input_grad(g, w)      dxp[b, i*sh+p, j*sw+q, c] += g[b,i,j,o] * w[p,q,c,o];
                               dx = dxp[:, top:top+H, left:left+W]   (H, W = attr in_hw)
  conv2d_weight_grad(x, g)     dw[p,q,c,o] = sum_{b,i,j} xp[b, i*sh+p, j*sw+q, c] * g[b,i,j,o]
  max_pool2d(x)                y[b,i,j,c] = max_{p<ph, q<pw} x[b, i*sh+p, j*sw+q, c]
  max_pool2d_grad(x, g)        dx[b, i*sh+p*, j*sw+q*, c] += g[b,i,j,c], where (p*, q*) is the
                               first maximum of the window in row-major (p, then q) order
  max_pool2d_select(x, h)      y[b,i,j,c] = h[b, i*sh+p*, j*sw+q*, c], (p*, q*) as above
  avg_pool2d(x)                y[b,i,j,c] = sum_{p,q} x[b, i*sh+p, j*sw+q, c] / (ph*pw)
  avg_pool2d_grad(g)           dx[b, i*sh+p, j*sw+q, c] += g[b,i,j,c] / (ph*pw)

Pooling has no padding: Ho = (H - ph) // sh + 1; rows past the last window get no gradient.
Ties in max pooling send the whole gradient to the first maximum (as PyTorch does), so the
gradient is that of one of the max's one-sided derivatives, never split or doubled.

Each op's backward is written with the others, so the set is closed under differentiation
(gradients of gradients work) and the registry-wide finite-difference test covers all of them.
"""

from __future__ import annotations

from symbp.ir import Node, SymbpError, check_identifier, fmt_shape
from symbp.ops.structural import node
from symbp.registry import OpDef, register


def int_pair(v, what: str, where: str) -> tuple[int, int]:
    """An int or a pair of ints, each at least 1."""
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    pair = tuple(pair) if isinstance(pair, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in pair):
        raise SymbpError(f"{where}: {what} must be a positive int or a pair of positive ints, got {v!r}")
    return pair


def check_image(x: Node, where: str) -> None:
    """Raise unless ``x`` is a float (batch, H, W, C) tensor; ``where`` names the layer."""
    if not isinstance(x, Node):
        raise SymbpError(f"{where}: expected a symbolic tensor, got {type(x).__name__}")
    if x.ndim != 4 or None in x.shape[1:] or x.dtype != "float":
        raise SymbpError(f"{where}: expects float images (batch, height, width, channels), "
                         f"got {x.describe()} of shape {fmt_shape(x.shape)} ({x.dtype})")


def _out_len(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1


def window_counts(hw, kernel, strides, pads, where: str) -> tuple[int, int]:
    """Output height and width; raises when the kernel does not fit the padded input."""
    out = []
    for n, k, s, (a, b), axis in zip(hw, kernel, strides, pads, ("height", "width")):
        if k > n + a + b:
            raise SymbpError(f"{where}: the {axis} {k} of the window is larger than the input {axis} {n}"
                             + (f" padded to {n + a + b}" if a + b else ""))
        out.append(_out_len(n + a + b, k, s))
    return tuple(out)


# -- convolution ----------------------------------------------------------------------------

def _conv_shape(inputs, strides, pads):
    x, w = inputs
    if w.ndim != 4 or None in w.shape or x.ndim != 4 or w.shape[2] != x.shape[3]:
        raise SymbpError(f"conv2d of {x.describe()} {fmt_shape(x.shape)} with kernel {w.describe()} "
                         f"{fmt_shape(w.shape)}: expects (batch, H, W, C) and (kh, kw, C, filters)")
    ho, wo = window_counts(x.shape[1:3], w.shape[:2], strides, pads, "conv2d")
    return (x.shape[0], ho, wo, w.shape[3]), "float"


def _conv_vjp(nd, g):
    x, w = nd.inputs
    a = nd.attrs
    return (node("conv2d_input_grad", (g, w), in_hw=x.shape[1:3], **a),
            node("conv2d_weight_grad", (x, g), kernel=w.shape[:2], **a))


def _conv_in_shape(inputs, in_hw, strides, pads):
    g, w = inputs
    return (g.shape[0], *in_hw, w.shape[2]), "float"


def _conv_in_vjp(nd, dd):
    g, w = nd.inputs
    a = {"strides": nd.attrs["strides"], "pads": nd.attrs["pads"]}
    # dx = A_w^T g is linear in g and in w; <dd, A_w^T g> = <A_w dd, g>.
    return (node("conv2d", (dd, w), **a), node("conv2d_weight_grad", (dd, g), kernel=w.shape[:2], **a))


def _conv_w_shape(inputs, kernel, strides, pads):
    x, g = inputs
    return (*kernel, x.shape[3], g.shape[3]), "float"


def _conv_w_vjp(nd, dd):
    x, g = nd.inputs
    a = {"strides": nd.attrs["strides"], "pads": nd.attrs["pads"]}
    # <dd, dW(x, g)> = <conv2d(x, dd), g>
    return (node("conv2d_input_grad", (g, dd), in_hw=x.shape[1:3], **a), node("conv2d", (x, dd), **a))


_CONV = {"strides": (2, 1), "pads": ((1, 1), (0, 1))}
register(OpDef("conv2d", "structural", shape=_conv_shape, vjp=_conv_vjp,
               sample={"shapes": [(None, 5, 4, 2), (3, 2, 2, 3)], "attrs": _CONV}))
register(OpDef("conv2d_input_grad", "structural", shape=_conv_in_shape, vjp=_conv_in_vjp,
               sample={"shapes": [(None, 3, 4, 3), (3, 2, 2, 3)], "attrs": {"in_hw": (5, 4), **_CONV}}))
register(OpDef("conv2d_weight_grad", "structural", shape=_conv_w_shape, vjp=_conv_w_vjp,
               sample={"shapes": [(None, 5, 4, 2), (None, 3, 4, 3)], "attrs": {"kernel": (3, 2), **_CONV}}))


def same_pads(hw, kernel, strides) -> tuple:
    """'same' padding: output size ceil(n / stride); an odd total pads the bottom/right more."""
    pads = []
    for n, k, s in zip(hw, kernel, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def conv2d(x: Node, w: Node, strides=1, padding: str = "valid", name: str | None = None) -> Node:
    """2-D convolution (cross-correlation, as in every framework) of NHWC images.

    Args:
        x: images (batch, H, W, C_in).
        w: kernel (kh, kw, C_in, C_out).
        strides: an int or (sh, sw).
        padding: "valid" (no padding) or "same" (zero padding so that Ho = ceil(H / sh)).
        name: the layer name used in error messages and in generated code.
    Returns:
        (batch, Ho, Wo, C_out). Add a bias separately: ``conv2d(x, w) + b``.
    """
    if name is not None:  # it names generated code: never arbitrary text
        check_identifier(name, "conv2d")
    where = f"layer {name!r}" if name else "conv2d"
    check_image(x, where)
    if not isinstance(w, Node) or w.ndim != 4 or None in w.shape:
        raise SymbpError(f"{where}: the kernel must be a tensor (kh, kw, C_in, C_out), got "
                         f"{w.describe() + ' ' + fmt_shape(w.shape) if isinstance(w, Node) else repr(w)}")
    if w.shape[2] != x.shape[3]:
        raise SymbpError(f"{where}: the input has {x.shape[3]} channels but the kernel {w.describe()} "
                         f"{fmt_shape(w.shape)} expects {w.shape[2]}")
    strides = int_pair(strides, "strides", where)
    if padding == "valid":
        pads = ((0, 0), (0, 0))
    elif padding == "same":
        pads = same_pads(x.shape[1:3], w.shape[:2], strides)
    else:
        raise SymbpError(f"{where}: padding must be 'valid' or 'same', got {padding!r}")
    window_counts(x.shape[1:3], w.shape[:2], strides, pads, where)
    return node("conv2d", (x, w), label=name, strides=strides, pads=pads)


# -- pooling --------------------------------------------------------------------------------

def _pool_shape(inputs, window, strides):
    x = inputs[0]
    ho, wo = window_counts(x.shape[1:3], window, strides, ((0, 0), (0, 0)), "pooling")
    return (x.shape[0], ho, wo, x.shape[3]), "float"


def _pool_attrs(nd) -> dict:
    return {"window": nd.attrs["window"], "strides": nd.attrs["strides"]}


def _max_pool_vjp(nd, g):
    return (node("max_pool2d_grad", (nd.inputs[0], g), **_pool_attrs(nd)),)


def _max_grad_shape(inputs, window, strides):
    x, g = inputs
    if _pool_shape((x,), window, strides)[0] != g.shape:
        raise SymbpError(f"max_pool2d_grad: the gradient {fmt_shape(g.shape)} does not fit {fmt_shape(x.shape)}")
    return x.shape, "float"


def _select_shape(inputs, window, strides):
    x, h = inputs
    if x.shape != h.shape:
        raise SymbpError(f"max_pool2d_select: {fmt_shape(x.shape)} and {fmt_shape(h.shape)} differ")
    return _pool_shape((x,), window, strides)


# The argmax positions are piecewise constant in x, so x gets no gradient through them.
_max_grad_vjp = lambda nd, dd: (None, node("max_pool2d_select", (nd.inputs[0], dd), **_pool_attrs(nd)))  # noqa: E731
_select_vjp = lambda nd, g: (None, node("max_pool2d_grad", (nd.inputs[0], g), **_pool_attrs(nd)))  # noqa: E731

_POOL = {"window": (2, 3), "strides": (2, 1)}
register(OpDef("max_pool2d", "structural", shape=_pool_shape, vjp=_max_pool_vjp,
               sample={"shapes": [(None, 5, 4, 2)], "attrs": _POOL}))
register(OpDef("max_pool2d_grad", "structural", shape=_max_grad_shape, vjp=_max_grad_vjp,
               sample={"shapes": [(None, 5, 4, 2), (None, 2, 2, 2)], "attrs": _POOL}))
register(OpDef("max_pool2d_select", "structural", shape=_select_shape, vjp=_select_vjp,
               sample={"shapes": [(None, 5, 4, 2), (None, 5, 4, 2)], "attrs": _POOL}))


def _avg_grad_shape(inputs, in_hw, window, strides):
    (g,) = inputs
    return (g.shape[0], *in_hw, g.shape[3]), "float"


register(OpDef("avg_pool2d", "structural", shape=_pool_shape,
               vjp=lambda nd, g: (node("avg_pool2d_grad", (g,), in_hw=nd.inputs[0].shape[1:3], **_pool_attrs(nd)),),
               sample={"shapes": [(None, 5, 4, 2)], "attrs": _POOL}))
register(OpDef("avg_pool2d_grad", "structural", shape=_avg_grad_shape,
               vjp=lambda nd, dd: (node("avg_pool2d", (dd,), **_pool_attrs(nd)),),
               sample={"shapes": [(None, 2, 2, 2)], "attrs": {"in_hw": (5, 4), **_POOL}}))


def _pool(op: str, x: Node, pool_size, strides, name: str | None) -> Node:
    if name is not None:
        check_identifier(name, op)
    where = f"layer {name!r}" if name else op
    check_image(x, where)
    window = int_pair(pool_size, "pool_size", where)
    strides = window if strides is None else int_pair(strides, "strides", where)
    window_counts(x.shape[1:3], window, strides, ((0, 0), (0, 0)), where)
    for n, k, s, axis in zip(x.shape[1:3], window, strides, ("height", "width")):
        if (n - k) % s:
            raise SymbpError(f"{where}: pooling windows of {k} with stride {s} do not tile the input {axis} {n} "
                             f"((n - window) must be divisible by the stride); crop or pad the input, "
                             f"or change pool_size/strides")
    return node(op, (x,), label=name, window=window, strides=strides)


def max_pool2d(x: Node, pool_size=2, strides=None, name: str | None = None) -> Node:
    """Max pooling over (pool_size) windows of NHWC images, no padding.

    Args:
        x: images (batch, H, W, C).
        pool_size: an int or (ph, pw).
        strides: an int or (sh, sw); default: the pool size (non-overlapping windows).
        name: the layer name used in error messages.
    Returns:
        (batch, Ho, Wo, C); the windows must tile the input exactly (else SymbpError).
    """
    return _pool("max_pool2d", x, pool_size, strides, name)


def avg_pool2d(x: Node, pool_size=2, strides=None, name: str | None = None) -> Node:
    """Average pooling; arguments as for ``max_pool2d``."""
    return _pool("avg_pool2d", x, pool_size, strides, name)
