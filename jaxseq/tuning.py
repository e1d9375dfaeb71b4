"""The choices jaxseq makes by size or platform, named in one place.

Every value below was chosen by measurement on XLA:CPU (2 cores); the runs that chose each one,
with their numbers, are on the benchmarks page (docs/benchmarks.md, "Tuned choices"). The
modules that act on them (`jaxseq.fused`, `jaxseq.products`, `jaxseq.rnn`) read them from
here and say what each choice does, not how it was measured.

`AUTO_IMPLEMENTATIONS` is what a layer's `implementation="auto"` runs: per family of layers and
per platform the program is lowered for ("cpu", or "default" for every other), the
implementations in order of preference; the first that supports the layer's configuration
runs (`jaxseq.rnn.resolve_implementation`). A layer of no family here (ConvLSTM, one
implementation) takes the first of its own that supports it.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "AUTO_IMPLEMENTATIONS",
    "AUTO_UNROLL",
    "SMALL_PRODUCT",
    "SMALL_STACKED",
    "SMALL_STEP_MULTIPLY_ADDS",
]

# implementation="auto": family -> platform -> preference order.
AUTO_IMPLEMENTATIONS = MappingProxyType({
    # LSTM, GRU, SimpleRNN: the custom-backward recurrence wherever it supports the layer.
    "cell": MappingProxyType({"cpu": ("fused", "scan"), "default": ("fused", "scan")}),
    # MinGRU, MinLSTM: the sequential loop on CPU, the O(log T)-depth scan on accelerators.
    "minimal": MappingProxyType({"cpu": ("sequential",), "default": ("parallel",)}),
})

# jaxseq.fused: the loop unroll when a layer leaves `unroll=False`.
AUTO_UNROLL = 1

# jaxseq.fused: a step whose product h @ recurrent_kernel has fewer multiply-adds (2 b g u^2,
# g = gates) than this is "small": XLA:CPU runs it on one thread, so on CPU the backward
# multiplies by recurrent_kernel.T gate by gate and the training forward folds the input
# projection into the step.
SMALL_STEP_MULTIPLY_ADDS = 16e6

# jaxseq.products: a product of at most this many multiply-adds (m k n) runs as an
# elementwise multiply and a sum instead of a dot ...
SMALL_PRODUCT = 2048
# ... and, under `jax.vmap`, the products of all replicas together at most this many.
SMALL_STACKED = 16384
