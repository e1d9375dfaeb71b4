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


FORK_EACH = """
import os, sys
import chex, flax.linen, jax, numpy, optax  # the heavy dependencies, loaded once
OPTIONAL = ('keras', 'torch', 'orbax', 'matplotlib', 'tqdm', 'h5py')
loaded = lambda: [m for m in OPTIONAL if m in sys.modules]
assert not loaded(), ('the core dependencies', loaded())
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:  # a child with no jaxseq module loaded yet
        try:
            __import__(name)
            if name == 'jaxseq':  # the package itself needs no optional dependency
                assert not loaded(), ('needs an optional dependency', loaded())
        except BaseException as err:
            print(name, repr(err), file=sys.stderr)
            os._exit(1)
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):
        failed.append(name)
assert not failed, failed
"""


def test_every_module_imports_first_in_a_fresh_interpreter_and_needs_no_optional_dependency():
    # Each module, and the package, imported before anything else of jaxseq (in a forked child
    # of an interpreter that holds only the core dependencies): an import cycle that only works
    # in one order (a partially initialised module) fails here, and so does a package import
    # that pulls in an optional dependency (keras, torch, orbax, matplotlib, tqdm, h5py).
    import pkgutil

    names = ["jaxseq"] + sorted(m.name for m in pkgutil.walk_packages(js.__path__, "jaxseq."))
    assert {"jaxseq.training.loop", "jaxseq.training.drivers", "jaxseq.checkpointing"} <= set(
        names)
    proc = subprocess.run([sys.executable, "-c", FORK_EACH, *names], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


CACHE_RUN = """
import jax
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == '/jax/compilation_cache/cache_hits' else None)
import jaxseq as js
x, y = js.problems.frame(js.problems.echo_sequence(5), 'one_to_one')
model = js.models.one_to_one()
js.predict(model, model.init(jax.random.PRNGKey(0), x)['params'], x)
print(len(hits))
"""


def test_jaxseq_cache_dir_turns_on_the_persistent_compilation_cache(tmp_path):
    import os

    env = {**os.environ, "JAXSEQ_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTEST_XDIST_TESTRUNUID", None)
    runs = [subprocess.run([sys.executable, "-c", CACHE_RUN], env=env, capture_output=True,
                           text=True, timeout=120, check=True).stdout.split()[-1]
            for _ in range(2)]
    assert int(runs[0]) == 0 and int(runs[1]) > 0  # the second process loads from disk
    assert any((tmp_path / "cache").iterdir())
