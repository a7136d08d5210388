"""Equations of recurrences: the cell, the δ-recurrence through time, sums over t, truncation."""

import symbp as sb
from symbp.ir import topo_order
from symbp.show.recurrences import format_scan_equations, scan_equations


def scan_of(kind: str, T: int, truncate=None):
    m = sb.Model("m")
    s, y = m.input("s", (T, 3)), m.input("y", (T,), dtype="int64")
    h = getattr(sb.layers, kind)(4, name="rnn", truncate=truncate)(m, s)
    m.minimize(sb.softmax_cross_entropy(sb.layers.Dense(5, name="out")(m, h), y))
    return next(n for n in topo_order([m.loss]) if n.op == "scan")


def test_simple_rnn_reads_like_the_textbook():
    eqs = scan_equations(scan_of("SimpleRNN", 5))
    text = {t for _, t, _ in eqs}
    # x_t·rnn_Wx does not read the carry: hoisted out of the loop (symbp.ops.hoist)
    assert "u_t = x_t·rnn_Wx   (before the loop, for all t at once)" in text
    assert "h_t = tanh(u_t + h_{t-1}·rnn_Wh + rnn_b)" in text
    assert "g1 = (δh_t + δy_t)*(1 - h_t**2)" in text          # output form of tanh': reuses h_t
    assert "δh_{t-1} = g1·rnn_Whᵀ" in text                     # the recurrence back through time
    assert "Δrnn_Wh_t = h_{t-1}ᵀ·g1" in text
    assert "∂L/∂rnn_Wh = Σ_t=0..4 Δrnn_Wh_t" in text
    assert {s for s, _, _ in eqs} == {"forward", "backward", "gradients"}
    assert eqs[0][2].startswith("u_{t} = x_{t}") and eqs[1][2].startswith("h_{t} = \\tanh")


def test_equations_do_not_grow_with_T_and_show_truncation():
    short, long = scan_equations(scan_of("LSTM", 3)), scan_equations(scan_of("LSTM", 300, (20, 30)))
    assert len(long) == len(short) + 1 and long[-1][0] == "truncation" and "every 20 steps, back 30" in long[-1][1]
    assert "δc_{t-1} =" in format_scan_equations(scan_of("LSTM", 3))


def test_recurrence_equations_of_a_derivation():
    m = sb.Model("two")
    s = m.input("s", (4, 3))
    h = sb.layers.GRU(4, name="enc")(m, s)
    h = sb.layers.SimpleRNN(2, name="dec", return_sequences=False)(m, h)
    m.minimize(sb.mean(h * h))
    from symbp.show.recurrences import recurrence_equations

    eqs = recurrence_equations(sb.derive(m))
    assert [label for label in dict.fromkeys(e[0] for e in eqs)] == ["enc", "dec"]
    assert ("dec", "gradients") in {(e[0], e[1]) for e in eqs}
