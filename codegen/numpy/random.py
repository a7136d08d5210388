"""NumPy emitter of the random ops: dropout masks from NumPy's own Philox-4x64-10.

``numpy.random.Philox`` is the generator ``symbp.ops.random`` specifies, in compiled C, so a
mask costs one ``random_raw`` call and a comparison. A generator object is made per mask
and call (~6 us): it is stateless in our use, its key and counter set from (seed, step,
stream), which the caller's workspace holds (``_ws.rng``, set by the Trainer per call).
"""

from __future__ import annotations

from symbp.ops.random import keep_threshold

HELPER = '''

def _dropout_mask(_ws, stream, threshold, scale, out):
    """Fill ``out`` with a dropout mask: 0 where the element's 32 random bits are below
    ``threshold``, else ``scale``. Philox-4x64-10, key (seed, 0), counter (1 + block, stream,
    step, 0) (numpy increments the counter before each block), 8 elements a block."""
    seed, step = _ws.rng
    words = np.random.Philox(key=seed, counter=np.array([0, stream, step, 0], dtype=np.uint64))
    bits = words.random_raw((out.size + 7) // 8 * 4).astype("<u8", copy=False).view("<u4")[:out.size]
    np.multiply(bits.reshape(out.shape) >= threshold, DTYPE(scale), out=out)
'''
"""Python of the helper a module with dropout masks defines (only such modules)."""


def _mask(n, out):
    rate = n.attrs["rate"]
    return [f"_dropout_mask(_ws, {n.attrs['stream']}, {keep_threshold(rate)}, {1.0 / (1.0 - rate)!r}, {out})"]


EMIT = {"dropout_mask": _mask}
