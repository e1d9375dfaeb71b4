"""The package imports, exposes its public names, and pulls in no optional dependency."""

import subprocess
import sys

import jaxseq as js

PUBLIC = {
    "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell", "Bidirectional",
    "TimeDistributed", "RepeatVector", "Sequential", "fit", "predict", "evaluate", "summary",
    "fit_replicas", "skill", "EarlyStopping", "save_params", "load_params", "seq2seq",
    "rollout", "problems", "models", "training", "replicas", "parallel", "checkpointing",
    "interop",
}


def test_public_names():
    assert PUBLIC <= set(js.__all__)
    for name in js.__all__:
        assert getattr(js, name) is not None
    assert callable(js.problems.echo_sequence) and callable(js.models.many_to_many)


def test_import_needs_no_optional_dependency():
    code = ("import sys, jaxseq; bad = [m for m in ('keras', 'torch', 'orbax', 'matplotlib', "
            "'tqdm', 'h5py') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
