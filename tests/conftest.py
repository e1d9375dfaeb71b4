"""Strict JAX for every test: rank promotion raises, 8 fake CPU devices.

float64 stays off by default (as for users); tests that need a float64 reference or
`check_grads` enter `jax.enable_x64(True)` themselves.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# jaxseq's drivers compile at XLA:CPU level 0 in the suite and its subprocesses (see below).
os.environ.setdefault("JAXSEQ_OPTIMIZATION_LEVEL", "0")
# XLA:CPU options for every program the tests compile themselves (references, layer applies,
# gradients, Keras' programs, eager ops; subprocesses inherit them): the loop emitters (as
# jaxseq's drivers use), LLVM at level 0 without its expensive passes, and one LLVM module per
# program instead of parallel parts (the suite's two workers already fill the cores). These
# programs are small and run a few times, so compiling them is most of the suite's time; level 0
# compiles them in about half the time (XLA:CPU keeps fast math off at every level). jaxseq's
# drivers (fit, fit_replicas, cross_validate, predict, evaluate, rollout) set their levels per
# program; the suite puts them at level 0 too (JAXSEQ_OPTIMIZATION_LEVEL above, the setting
# users have for the same trade), and the tests that compare the drivers with the programs
# users get by default run at the default level (tests_common.at_optimization_level). Flags the
# environment already sets are kept.
_flags = os.environ.get("XLA_FLAGS", "")
_TEST_FLAGS = {"--xla_cpu_use_fusion_emitters": "false", "--xla_backend_optimization_level": "0",
               "--xla_llvm_disable_expensive_passes": "true",
               "--xla_cpu_parallel_codegen_split_count": "1"}
os.environ["XLA_FLAGS"] = " ".join(
    [_flags, *(f"{k}={v}" for k, v in _TEST_FLAGS.items() if k not in _flags)]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")

# One persistent compilation cache per test run, shared by the xdist workers: programs that
# several test files compile alike (the tutorial models, fit's loop) compile once per run.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _run:
    import tempfile

    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(tempfile.gettempdir(), f"jaxseq-tests-{_run}"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def no_persistent_cache():
    """Compile counts need real compiles: no hits from the run's shared persistent cache."""
    old = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", old)
