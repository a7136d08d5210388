"""The digits MLP example (the README's first command) runs and learns."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mlp_digits.py"


def test_mlp_digits_learns_in_five_epochs(capsys):
    spec = importlib.util.spec_from_file_location("mlp_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # 30 epochs (the default) reach 97-98 %; five already pass 93 % (chance is 10 %).
    assert module.main(epochs=5) >= 0.93
    out = capsys.readouterr().out
    assert "derived and compiled" in out and "test accuracy" in out
