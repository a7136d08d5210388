"""The digits MLP example (the README's first command) runs and learns."""

from tests.helpers import example


def test_mlp_digits_learns_in_five_epochs(capsys):
    module = example("mlp_digits")
    # 30 epochs (the default) reach 97-98 %; five already pass 93 % (chance is 10 %).
    assert module.main(epochs=5) >= 0.93
    out = capsys.readouterr().out
    assert "derived and compiled" in out and "test accuracy" in out
