"""Devices: data-parallel fit on 8 fake CPU devices, and a real two-process jax.distributed run."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from tests_common import dist_case

import jaxseq as js
from jaxseq import parallel

HERE = Path(__file__).parent


def _cpu_mesh():
    """A mesh over conftest's 8 CPU devices (explicitly: on a GPU host the default devices are
    the GPUs)."""
    devices = jax.devices("cpu")
    assert len(devices) == 8
    return parallel.make_mesh(devices)


def test_data_parallel_fit_equals_single_device():
    model, x, y, fit_kw, _ = dist_case()
    mesh = _cpu_mesh()
    state, history = js.fit(model, x, y, mesh=mesh, verbose=0, **fit_kw)
    single, h1 = js.fit(model, x, y, verbose=0, **fit_kw)
    kernel = state.params["lstm"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and kernel.sharding.is_fully_replicated
    # Per-device partial gradients are summed in another order: float32 tolerance.
    chex.assert_trees_all_close(parallel.to_host(state.params), single.params, rtol=1e-5,
                                atol=1e-6)
    np.testing.assert_allclose(history.loss, h1.loss, rtol=1e-5)


def test_data_parallel_program_reduces_gradients_across_devices(monkeypatch):
    model, x, y, fit_kw, _ = dist_case()
    mesh = _cpu_mesh()
    texts = []
    original = js.training.programs.loop_program

    def capturing(*args, **kwargs):  # record the compiled program's HLO, after partitioning
        run = original(*args, **kwargs)
        jitted = run.top or run.nested

        def wrapped(*a):
            texts.append(jitted.lower(*a).compile().as_text())
            return run(*a)

        return wrapped

    monkeypatch.setattr(js.training.programs, "loop_program", capturing)
    js.fit(model, x, y, mesh=mesh, verbose=0, **fit_kw)
    assert texts and "all-reduce" in texts[0]


def test_data_parallel_needs_divisible_batches():
    model, x, y, _, _ = dist_case()
    with pytest.raises(ValueError, match="batch_size divisible by the mesh size 8; got 6"):
        js.fit(model, x, y, epochs=1, batch_size=6, mesh=_cpu_mesh(), verbose=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_form_one_mesh(tmp_path):
    port = _free_port()
    # The workers import the same jaxseq as this process: the checkout above tests/. They
    # inherit the suite's XLA_FLAGS (conftest: the faster-compiling loop emitters).
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "dist_worker.py"), str(i), "2", str(port), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:  # never leave a worker behind, even on timeout
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    a, b = (np.load(tmp_path / f"process{i}.npz") for i in range(2))
    assert int(a["devices"]) == 4
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:  # both processes see exactly the same global result
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    model, x, y, fit_kw, rep_kw = dist_case()
    single, history = js.fit(model, x, y, verbose=0, **fit_kw)
    rsingle, rhistory = js.fit_replicas(model, x, y, **rep_kw)
    np.testing.assert_allclose(a["loss"], history.loss, rtol=1e-5)
    np.testing.assert_allclose(a["rloss"], rhistory.loss, rtol=1e-5)
    for prefix, tree in (("fit", single.params), ("rep", rsingle.params)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            np.testing.assert_allclose(a[prefix + jax.tree_util.keystr(path)], leaf, rtol=1e-5,
                                       atol=1e-6)


def test_use_cpu_devices_checks_its_count():
    # conftest started the backend with 8 CPU devices: asking for 8 again is fine, another
    # count is a clear error, and so is a non-positive one.
    n = len(jax.devices("cpu"))
    parallel.use_cpu_devices(n)
    with pytest.raises(RuntimeError, match=f"already started with {n} device"):
        parallel.use_cpu_devices(n + 1)
    for bad in (0, -2, True, 2.0):
        with pytest.raises(ValueError, match="expects a positive integer"):
            parallel.use_cpu_devices(bad)


def test_make_mesh_and_check_mesh_errors():
    devices = jax.devices("cpu")
    mesh = parallel.make_mesh(devices[:4], axis_name="replicas")
    assert mesh.devices.shape == (4,) and mesh.axis_names == ("replicas",)
    assert list(mesh.devices) == devices[:4]
    assert parallel.check_mesh(mesh, "here") == "replicas"
    with pytest.raises(ValueError, match="make_mesh expects at least one device; got none"):
        parallel.make_mesh([])
    two_d = jax.sharding.Mesh(np.asarray(devices).reshape(2, 4), ("a", "b"))
    for bad in (two_d, "devices", None):
        with pytest.raises(ValueError, match=r"^fit_here expects a 1-D jax\.sharding\.Mesh"):
            parallel.check_mesh(bad, "fit_here")
    with pytest.raises(ValueError, match="batch_sharding expects a 1-D"):
        parallel.batch_sharding(two_d)
    with pytest.raises(ValueError, match="shard_replicas expects a replica count divisible by "
                                         "the mesh size 4; got 6 replicas"):
        parallel.shard_replicas({"w": np.zeros((6, 2))}, mesh)
