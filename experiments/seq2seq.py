"""A teacher-forced encoder-decoder with the structure of Keras' `lstm_seq2seq` example, on
`js.problems.sine_forecast` (forecast the next H values of a noisy sine mixture).

Training model (two inputs, one `js.fit`): the encoder LSTM reads the window and returns its
states (`return_state=True`); the decoder LSTM starts from them (`initial_state`) and reads the
target shifted by one step (teacher forcing: the last observed value, then y_0 .. y_{H-2});
a Dense head predicts y_0 .. y_{H-1}. Inference (no target): encode once, then a
`jax.lax.scan` feeds each prediction back as the decoder's next input, carrying its states.

Prints and writes (JSON) the test MSE of the teacher-forced model, of the free-running
forecast, and of the persistence baseline (repeat the last observed value).

Command (from the repository root): `python experiments/seq2seq.py [--quick] [--out DIR]`
Expect: the free-running forecast beats persistence; its MSE is at or above the
teacher-forced one (it sees its own errors).
"""

import argparse
import json
import time
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxseq as js


class Seq2Seq(nn.Module):
    """source (batch, n_in, 1) and target_in (batch, H, 1) -> (batch, H, 1)."""

    units: int = 32

    def setup(self):
        self.encoder = js.LSTM(self.units, return_state=True)
        self.decoder = js.LSTM(self.units, return_sequences=True, return_state=True)
        self.head = js.Dense(1)

    def encode(self, source):
        _, h, c = self.encoder(source)
        return h, c

    def decode(self, target_in, states):
        out, h, c = self.decoder(target_in, initial_state=states)
        return self.head(out), (h, c)

    def __call__(self, source, target_in):  # the training model: teacher forcing
        return self.decode(target_in, self.encode(source))[0]


def teacher_inputs(x, y):
    """(batch, H, 1): the decoder's inputs, the target shifted one step right, starting from
    the last observed value."""
    return np.concatenate([x[:, -1:, :], y[:, :-1, None]], axis=1)


@partial(jax.jit, static_argnums=(0, 3))
def forecast(model, variables, x, steps):
    """(batch, steps): encode x, then feed every prediction back (the inference loop)."""
    states = model.apply(variables, x, method=Seq2Seq.encode)

    def step(carry, _):
        previous, states = carry
        y, states = model.apply(variables, previous, states, method=Seq2Seq.decode)
        return (y, states), y[:, 0, 0]

    _, ys = jax.lax.scan(step, (x[:, -1:, :], states), None, length=steps)
    return ys.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and few epochs")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    horizon, n_in = 6, 12
    n_train, epochs, units = (256, 60, 16) if args.quick else (2000, 150, 32)
    split = js.problems.sine_forecast(80, n_in, horizon, n_series=32, n_train=n_train,
                                      n_test=200, seed=0)
    x, y = split.x_train, split.y_train
    model = Seq2Seq(units)
    start = time.perf_counter()
    state, history = js.fit(model, (x, teacher_inputs(x, y)), y[..., None], epochs=epochs,
                            batch_size=32, optimizer="adam", verbose=0)
    wall = time.perf_counter() - start
    xt, yt = split.x_test, split.y_test
    teacher = js.evaluate(model, state, (xt, teacher_inputs(xt, yt)), yt[..., None])
    free = np.asarray(forecast(model, state.variables, jnp.asarray(xt), horizon))
    free_mse = float(np.mean((free.astype(np.float64) - yt) ** 2))
    # both routes feed the decoder the same first input: their first steps agree
    first = np.asarray(js.predict(model, state, (xt, teacher_inputs(xt, yt))))[:, 0, 0]
    result = dict(epochs=epochs, n_train=n_train, units=units, horizon=horizon,
                  final_loss=float(history.loss[-1]), teacher_forced_mse=teacher,
                  free_running_mse=free_mse, persistence_mse=split.baseline_mse,
                  first_step_max_diff=float(np.max(np.abs(first - free[:, 0]))), wall_s=wall)
    print(f"seq2seq on sine_forecast (H={horizon}): teacher-forced MSE {teacher:.4f}, "
          f"free-running MSE {free_mse:.4f}, persistence MSE {split.baseline_mse:.4f} "
          f"({epochs} epochs, {wall:.1f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seq2seq.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
