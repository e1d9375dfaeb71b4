"""Strict JAX for every test: rank promotion raises, 8 fake CPU devices.

float64 stays off by default (as for users); tests that need a float64 reference or
`check_grads` enter `jax.enable_x64(True)` themselves.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
