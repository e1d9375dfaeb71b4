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


def test_every_module_imports_first_in_a_fresh_interpreter():
    # Each module imported before anything else of jaxseq: an import cycle that only works in
    # one order (a partially initialised module) fails here. One interpreter per module, run
    # side by side.
    import pkgutil

    names = sorted(m.name for m in pkgutil.walk_packages(js.__path__, "jaxseq."))
    assert {"jaxseq.training.loop", "jaxseq.training.drivers", "jaxseq.checkpointing"} <= set(
        names)
    procs = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"],
                                    stderr=subprocess.PIPE, text=True) for name in names}
    failed = {name: p.communicate(timeout=300)[1][-500:] for name, p in procs.items()}
    failed = {name: err for name, err in failed.items() if procs[name].returncode}
    assert not failed, failed
