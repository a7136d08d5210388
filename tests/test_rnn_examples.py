"""The recurrent examples run, briefly, at a tiny size."""

import importlib.util
import math
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_char_rnn_learns_and_samples(capsys):
    loss = load("char_rnn").main(seconds=60, steps=4, hidden=8, T=8, batch=4, every=2)
    out = capsys.readouterr().out
    assert math.isfinite(loss) and loss < 4.7  # below log(103): it has started to learn the alphabet
    assert "step     2" in out and "    The " in out


def test_time_series_compares_cells(tmp_path):
    png = tmp_path / "g.png"
    results = load("time_series").main(steps=5, T=8, hidden=4, batch=8, png=str(png))
    assert set(results) == {"SimpleRNN", "GRU", "LSTM"} and all(math.isfinite(v) for v in results.values())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert png.read_bytes()[:4] == b"\x89PNG"
