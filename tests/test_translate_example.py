"""examples/translate.py: the generated sentences say their date, and the model trains and decodes
greedily at a tiny size on both backends."""

import datetime

import numpy as np
from threadpoolctl import threadpool_limits

from tests.helpers import example


def test_the_sentences_say_their_date():
    t = example("translate")
    assert [f(datetime.date(1991, 3, 3)) for f in t.FORMATS] == [
        "the third of march, nineteen ninety-one", "third march nineteen ninety-one",
        "march the third, nineteen ninety-one", "3 Mar 1991", "March 3rd, 1991", "03/03/1991", "3.3.1991",
        "Sunday, March 3, 1991", "sunday the third of march 1991", "on the 3rd of March, 1991",
        "1991, march third"]
    assert [t.year_words(y) for y in (1900, 1905, 1910, 2000, 2007, 2010, 2099)] == [
        "nineteen hundred", "nineteen oh five", "nineteen ten", "two thousand", "two thousand and seven",
        "twenty ten", "twenty ninety-nine"]
    assert [t.ordinal(n) for n in (12, 20, 21, 30, 31)] == [
        "twelfth", "twentieth", "twenty-first", "thirtieth", "thirty-first"]
    assert [f"{n}{t.suffix(n)}" for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"]
    pairs = t.sentences(np.random.default_rng(0), 200)
    for sentence, iso in pairs:
        d = datetime.date.fromisoformat(iso)
        assert str(d.year) in sentence or t.year_words(d.year) in sentence, (sentence, iso)
    batch = t.encode(pairs[:3], t.vocabulary(pairs), 60)
    assert batch["y"].shape == batch["dec"].shape == (3, t.T_OUT)
    assert (batch["dec"][:, 0] == t.BOS).all() and (batch["dec"][:, 1:] == batch["y"][:, :-1]).all()
    assert "".join(t.TARGET[c] for c in batch["y"][0]) == pairs[0][1]


def test_translate_trains_and_decodes_greedily_on_both_backends(monkeypatch, capsys):
    t = example("translate")
    decoded, greedy = [], t.greedy

    def spy(tr, src):  # keeps each run's trainer and decodings
        decoded.append((tr, src, greedy(tr, src)))
        return decoded[-1][2]

    monkeypatch.setattr(t, "greedy", spy)
    small = dict(epochs=2, train=3000, test=200, embed=16, hidden=32, batch=32, show=2)
    with threadpool_limits(limits=1, user_api="blas"):  # small products: one BLAS thread is fastest
        accuracy = {b: t.main(backend=b, **small) for b in ("numpy", "cython")}
    out = capsys.readouterr().out
    assert "held-out exact match" in out and " -> " in out and "✓" in out
    # Chance is ~0 (ten characters all right); the full run reaches 100 %.
    assert min(accuracy.values()) > 0.3, accuracy
    assert abs(accuracy["numpy"] - accuracy["cython"]) <= 0.05, accuracy
    for tr, src, got in decoded:
        # Greedy output is a fixed point of teacher forcing: fed back as the decoder's input,
        # every position's best next character is the one that was chosen.
        dec = np.concatenate([np.full((len(src), 1), t.BOS), got[:, :-1]], axis=1)
        assert (tr.predict(src=src, dec=dec)["logits"].argmax(-1) == got).all()
