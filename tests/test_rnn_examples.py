"""The recurrent examples run, briefly, at a tiny size."""

import math

from tests.helpers import example as load


def test_char_rnn_learns_and_samples(capsys):
    # Truncated BPTT on the Zen of Python at a tiny size, then a sample drawn a character at a
    # time from the inference model's predict state: it recites whole lines of the text (a
    # sampler that forgot its state between calls, as before, wrote gibberish).
    example = load("char_rnn")
    loss, text = example.main(seconds=600, steps=800, hidden=64, T=32, k=16, batch=8, backend="numpy", temperature=0.2,
                              length=150)
    assert loss < 0.5
    zen = {line for line in example.corpus("zen").splitlines() if len(line) > 15}
    recited = [line for line in text.splitlines()[1:] if line in zen]
    assert recited, text
    assert text.startswith("Beautiful is") and "step   800" in capsys.readouterr().out


def test_time_series_compares_cells(tmp_path):
    png = tmp_path / "g.png"
    results = load("time_series").main(steps=5, T=8, hidden=4, batch=8, png=str(png))
    assert set(results) == {"SimpleRNN", "GRU", "LSTM"} and all(math.isfinite(v) for v in results.values())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert png.read_bytes()[:4] == b"\x89PNG"
