"""Mixed precision: parameters in float32, computation in bfloat16, against float32.

Recipe: `js.LSTM(units, dtype=jnp.bfloat16)` (and `nn.Dense(..., dtype=jnp.bfloat16)`): the
parameters stay float32 (`param_dtype`, what the optimizer updates), every product and
activation runs in bfloat16. Measured here:
1. an LSTM(128) fwd+bwd at 64x100x128x128 (batch x time x features x units): relative error of
   the outputs and of every gradient against the float32 layer with the same parameters;
2. the tutorial's many-to-many fit (1000 epochs): final loss and max |prediction - target|.

Command: `python experiments/mixed_precision.py`
Expect (CPU): output errors ~1e-2 relative, gradients ~1e-2, the tutorial learning as in float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxseq as js


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def layer_error() -> dict:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 100, 128)), jnp.float32)
    f32 = js.LSTM(128, return_sequences=True)
    bf16 = js.LSTM(128, return_sequences=True, dtype=jnp.bfloat16)
    params = f32.init(jax.random.PRNGKey(0), x)["params"]

    def run(layer):
        def loss(p, x):
            return jnp.mean(layer.apply({"params": p}, x).astype(jnp.float32) ** 2)

        out = jax.jit(lambda p, x: layer.apply({"params": p}, x))(params, x)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        return out, grads

    (o32, (g32, dx32)), (o16, (g16, dx16)) = run(f32), run(bf16)
    errs = {"output": rel(o16, o32), "dx": rel(dx16, dx32)}
    for name in g32:
        errs[f"d{name}"] = rel(g16[name], g32[name])
    assert o16.dtype == jnp.bfloat16 and g16["kernel"].dtype == jnp.float32
    return errs


def tutorial() -> dict:
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
    out = {}
    for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        model = js.Sequential((js.LSTM(5, return_sequences=True, dtype=dtype),
                               js.TimeDistributed(nn.Dense(1, dtype=dtype))))
        state, history = js.fit(model, x, y, epochs=1000, batch_size=1, verbose=0)
        pred = np.asarray(js.predict(model, state, x), np.float32)
        out[name] = {"final_loss": float(history.loss[-1]),
                     "max_abs_error": float(np.max(np.abs(pred - y)))}
    return out


if __name__ == "__main__":
    print("LSTM 64x100x128x128 fwd+bwd, bfloat16 compute vs float32 (relative L2 error):")
    for k, v in layer_error().items():
        print(f"  {k:<20} {v:.2e}")
    print("Tutorial many_to_many, 1000 epochs:")
    for k, v in tutorial().items():
        print(f"  {k:<9} final loss {v['final_loss']:.2e}  max |pred - y| {v['max_abs_error']:.3f}")
