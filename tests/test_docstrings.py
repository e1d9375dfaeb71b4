"""Each public layer's docstring is its reference: every constructor field is documented
(meaning, default) in its `Attributes:` section, and the call, its outputs and its errors are
described; the docstring examples run."""

import dataclasses
import doctest
import re

import pytest

import jaxseq as js
from jaxseq import recurrent

LAYERS = [js.LSTM, js.GRU, js.SimpleRNN, js.RNN, js.Bidirectional, js.TimeDistributed,
          js.RepeatVector, js.ConvLSTM1D, js.ConvLSTM2D, js.MinGRU, js.MinLSTM, js.Dense,
          js.Dropout, js.Masking, js.LSTMCell, js.GRUCell, js.SimpleRNNCell]


def _section(doc: str, title: str) -> str:
    """The lines of a Google-style section, up to the next unindented section title."""
    found = re.search(rf"^    {title}:\n(.*?)(?=^    \S|\Z)", doc, re.M | re.S)
    return found.group(1) if found else ""


def _documented(doc: str) -> set[str]:
    names = set()
    for line in _section(doc, "Attributes").splitlines():
        head = re.match(r"^      (\w[\w, ]*):", line)
        if head:
            names |= {n.strip() for n in head.group(1).split(",")}
    return names


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_every_field_is_documented(cls):
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
    documented = _documented(cls.__doc__)
    assert fields <= documented, sorted(fields - documented)
    assert documented <= fields, sorted(documented - fields)  # no stale names


@pytest.mark.parametrize("cls", [c for c in LAYERS if c is not js.RNN],
                         ids=lambda c: c.__name__)
def test_call_outputs_and_errors_are_described(cls):
    doc = cls.__doc__
    assert re.search(r"^    Call arguments:\n", doc, re.M), "no call arguments"
    assert _section(doc, "Returns").strip() and _section(doc, "Raises").strip()
    assert "Keras" in doc or "Feng" in doc  # where the semantics come from


def test_rnn_call_has_args_returns_raises():
    doc = js.RNN.__call__.__doc__
    for title in ("Args", "Returns", "Raises"):
        assert re.search(rf"^        {title}:\n", doc, re.M), title
    for arg in ("x", "mask", "initial_state", "deterministic"):
        assert re.search(rf"^          {arg}:", doc, re.M), arg


def test_docstring_examples_run():
    result = doctest.testmod(recurrent, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0
