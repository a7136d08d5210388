"""Names users give loops and conv/pool layers reach generated code: hostile ones are refused
where they are given, and loop labels never land inside a docstring or string literal."""

import io
import tokenize

import numpy as np
import pytest

import symbp as sb

HOSTILE = ['x"""; __import__("os").system("echo PWNED"); """', "a\x00b", "a\nb", "a b", "_private", "for"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_are_refused(bad):
    m = sb.Model("m")
    s, img = m.input("s", (3, 2)), m.input("img", (4, 4, 1))
    W, K = m.param("W", (2, 2)), m.param("K", (2, 2, 1, 1))
    with pytest.raises(sb.SymbpError, match=r"scan name .*not a valid Python identifier|reserved"):
        sb.scan(lambda h, x: (sb.tanh(x @ W + h), h), s, sb.zeros((2,)), label=bad)
    with pytest.raises(sb.SymbpError, match="conv2d name"):
        sb.conv2d(img, K, name=bad)
    with pytest.raises(sb.SymbpError, match="max_pool2d name"):
        sb.max_pool2d(img, name=bad)
    with pytest.raises(sb.SymbpError, match="avg_pool2d name"):
        sb.avg_pool2d(img, name=bad)


def test_loop_labels_only_appear_as_code_repr(rng):
    m = sb.Model("m")
    s, y = m.input("s", (3, 2)), m.input("y", (2,))
    W = m.param("W", (2, 2))
    hT, _ = sb.scan(lambda h, x: (sb.tanh(x @ W + h), h), s, sb.zeros((2,)), label="enc", stateful=True)
    m.minimize(sb.mse(hT, y))
    tr = sb.compile(sb.derive(m), dtype="float64")
    compile(tr.source, "<generated>", "exec")
    strings = [t.string for t in tokenize.generate_tokens(io.StringIO(tr.source).readline)
               if t.type == tokenize.STRING and "enc" in t.string]
    # only repr() of names in code ('enc', 'd_enc'); no docstring or message text holds the label
    assert "'enc'" in strings and all(t[0] == "'" and t[1:-1].isidentifier() for t in strings), strings
    assert np.isfinite(tr.loss(s=rng.normal(size=(2, 3, 2)), y=np.zeros((2, 2))))
