"""Strict JAX for every test: rank promotion raises, 8 fake CPU devices.

float64 stays off by default (as for users); tests that need a float64 reference or
`check_grads` enter `jax.enable_x64(True)` themselves.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# XLA:CPU compiles the tests' own programs (layer applies, gradients, references) with the loop
# emitters, as jaxseq compiles its drivers' programs (compile.CPU_OPTIONS): the suite's programs
# are tiny, so compiling them is most of its time, and the loop emitters compile them in about
# half the time. Subprocesses inherit the flag; one the environment already sets is kept.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_cpu_use_fusion_emitters" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_cpu_use_fusion_emitters=false".strip()

import jax  # noqa: E402

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
