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


def import_first(name, report=None):
    # in a forked child with no jaxseq module loaded yet: import `name`, exit 0 if it worked
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
            if name == 'jaxseq':  # the package itself needs no optional dependency
                assert not loaded(), ('needs an optional dependency', loaded())
            if report is not None:  # the jaxseq modules this import loaded, one per line
                os.write(report, '\\n'.join(m for m in sys.modules
                                            if m.startswith('jaxseq')).encode())
        except BaseException as err:
            print(name, repr(err), file=sys.stderr)
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


# Importing any submodule runs the package's __init__ first; every module that __init__ loads
# is therefore imported in the same order whichever name is asked for, and one child checks
# them all. Each module the package does not load (the lazily imported ones) gets its own child.
read, write = os.pipe()
ok = import_first('jaxseq', report=write)
os.close(write)
with os.fdopen(read) as f:
    with_package = set(f.read().split())
assert ok and 'jaxseq.training.loop' in with_package, 'import jaxseq failed'
failed = [name for name in sys.argv[1:] if name not in with_package and not import_first(name)]
assert not failed, failed
print('separately:', sorted(set(sys.argv[1:]) - with_package))
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
    # the lazily loaded interop modules were imported first in children of their own
    assert "'jaxseq.interop.keras'" in proc.stdout and "'jaxseq.interop.torch'" in proc.stdout


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


LEVEL_RUN = """
import os, sys
os.environ["JAXSEQ_OPTIMIZATION_LEVEL"] = "high"
try:
    import jaxseq
except ValueError as err:
    print("refused:", err)
for name in [m for m in sys.modules if m == "jaxseq" or m.startswith("jaxseq.")]:
    del sys.modules[name]
os.environ["JAXSEQ_OPTIMIZATION_LEVEL"] = "2"
import jaxseq as js
print("level", js.training.optimization_level(),
      js.training.compiler_options()["xla_backend_optimization_level"],
      js.training.compiler_options(once=True)["xla_backend_optimization_level"])
"""


def test_jaxseq_optimization_level_sets_the_drivers_level_for_the_process():
    out = subprocess.run([sys.executable, "-c", LEVEL_RUN], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[0].startswith("refused: JAXSEQ_OPTIMIZATION_LEVEL must be 0, 1, 2 or 3")
    assert "got 'high'" in out[0] and "Unset it" in out[0]
    assert out[1] == "level 2 2 1"


NAMESPACE = """
import importlib, types
import jaxseq
packages = ["jaxseq", "jaxseq.training", "jaxseq.evaluation", "jaxseq.interop"]
for name in packages:
    mod = importlib.import_module(name)
    assert len(set(mod.__all__)) == len(mod.__all__), name
    public = {n for n in dir(mod) if not n.startswith("_")}
    assert public == set(mod.__all__), (name, sorted(public ^ set(mod.__all__)))
    for n in mod.__all__:
        assert getattr(mod, n) is not None, (name, n)
    # nothing else as an attribute either, save this package's own submodules
    for n, value in vars(mod).items():
        if n.startswith("_") or n in mod.__all__:
            continue
        assert isinstance(value, types.ModuleType) and value.__name__ == f"{name}.{n}", (
            name, n, value)
    star = {}
    exec(f"from {name} import *", star)
    assert set(star) - {"__builtins__"} == set(mod.__all__), name
print("clean")
"""


def test_namespaces_hold_their_public_names_only():
    # dir() lists `__all__` (no `os`, no implementation modules), every public name resolves,
    # and no attribute other than the package's own submodules sits beside them; in a fresh
    # interpreter, after a training run has imported the lazily loaded modules as well.
    code = ("import jaxseq as js\n"
            "x, y = js.problems.frame(js.problems.echo_sequence(5), 'one_to_one')\n"
            "js.fit(js.models.one_to_one(), x, y, epochs=1, verbose=0, optimizer='sgd')\n"
            + NAMESPACE)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr[-3000:]
    assert "os" not in dir(js) and not hasattr(js, "os")
    assert {"cells", "recurrent", "fused", "typing"}.isdisjoint(dir(js))
    assert js.layers.Dense is js.Dense  # implementation modules stay reachable by full name


def test_py_typed_marker_ships_with_the_package():
    import pathlib

    root = pathlib.Path(js.__file__).parent
    assert (root / "py.typed").is_file()
    project = (root.parent / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\njaxseq = ["py.typed"]' in project
    assert 'license = "Apache-2.0"\nlicense-files = ["LICENSE"]' in project
    assert (root.parent / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]


def _jaxseq_imports(path) -> set[str]:
    """The jaxseq modules a file imports, at the top or late ('from jaxseq import parallel'
    counts as jaxseq.parallel)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} if node.module != "jaxseq" else {
                f"jaxseq.{a.name}" for a in node.names}
    return {n for n in names if n == "jaxseq" or n.startswith("jaxseq.")}


def test_imports_run_down_the_layers():
    # The training package imports the rooms below it only (checkpointing lazily, for its
    # checkpoint hook); checkpointing, saving (which checkpointing imports) and the models
    # import nothing of training.
    import pathlib

    root = pathlib.Path(js.__file__).parent
    below = {"jaxseq.contracts", "jaxseq.parallel", "jaxseq.typing", "jaxseq.history",
             "jaxseq.checkpointing"}
    for path in sorted((root / "training").glob("*.py")):
        outside = {n for n in _jaxseq_imports(path) if not n.startswith("jaxseq.training")}
        assert outside <= below, (path.name, sorted(outside - below))
    for name in ("checkpointing.py", "saving.py", "models.py", "history.py"):
        up = {n for n in _jaxseq_imports(root / name) if n.startswith("jaxseq.training")}
        assert not up, (name, sorted(up))
