"""From Keras: a real forecasting workflow, jaxseq and Keras 3 side by side (docs/from_keras.md).

Data: statsmodels' El Niño series (monthly sea surface temperatures of the eastern Pacific,
1950-2010, 732 months), shipped inside statsmodels: nothing is downloaded. The workflow:
scale with the training part's min/max, windows of 12 months -> the next month
(`js.problems.series_to_supervised`), split by time (the last 20% of windows test), LSTM(32) +
Dense(1), Adam, validation on the last 20% of the training windows (`validation_split`, before
shuffling), early stopping on val_loss (patience 20, best weights restored), RMSE in degrees
Celsius against persistence (next month = this month), skill over seeds (`fit_replicas` with the
same early stopping, one compiled program), and a save/load round trip.

Command (from the repository root): `pip install -e ".[experiments,interop]" statsmodels &&
python experiments/from_keras.py` (`--seeds N`, `--keras-seeds N`; about a minute on 2 CPU
cores). Prints the numbers docs/from_keras.md quotes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

import jaxseq as js  # noqa: E402

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
WINDOW, EPOCHS, BATCH, PATIENCE = 12, 300, 32, 20


def load():
    import statsmodels.api as sm

    frame = sm.datasets.elnino.load_pandas().data
    series = frame[MONTHS].to_numpy(np.float64).ravel()  # 732 months, in time order
    x, y = js.problems.series_to_supervised(series.astype(np.float32), n_in=WINDOW)  # float32
    split = int(len(x) * 0.8)
    lo, hi = series[: split + WINDOW].min(), series[: split + WINDOW].max()  # train part only
    scale = lambda a: ((a - lo) / (hi - lo)).astype(np.float32)
    return (scale(x[:split]), scale(y[:split, 0]), scale(x[split:]), scale(y[split:, 0]),
            lo, hi)


def rmse(pred, y, lo, hi) -> float:
    """Root mean squared error in degrees C of scaled (n,) or (n, 1) predictions and targets."""
    pred, y = np.ravel(pred), np.ravel(y)
    assert pred.shape == y.shape, (pred.shape, y.shape)
    return float(np.sqrt(np.mean(((pred - y) * (hi - lo)) ** 2)))


def jaxseq_run(data, seeds: int) -> dict:
    x, y, xt, yt, lo, hi = data
    model = js.Sequential((js.LSTM(32), js.Dense(1)))
    stop = lambda: js.EarlyStopping(monitor="val_loss", patience=PATIENCE,
                                    restore_best_weights=True)
    t = time.perf_counter()
    es = stop()
    state, history = js.fit(model, x, y, epochs=EPOCHS, batch_size=BATCH, optimizer="adam",
                            validation_split=0.2, callbacks=[es], verbose=0)
    wall = time.perf_counter() - t
    pred = np.asarray(js.predict(model, state, xt))
    path = os.path.join(tempfile.mkdtemp(), "elnino.jaxseq")
    js.save_model(path, model, state)
    again, variables = js.load_model(path)
    same = bool(np.array_equal(np.asarray(js.predict(again, variables, xt)), pred))
    t = time.perf_counter()
    states, h = js.fit_replicas(model, x, y, seeds=seeds, epochs=EPOCHS, batch_size=BATCH,
                                optimizer="adam", validation_split=0.2, callbacks=[stop()])
    wall_replicas = time.perf_counter() - t
    sk = js.skill(model, states, xt, yt, history=h, n_boot=2000)
    per_seed = np.sqrt(sk["mse"][0]) * (hi - lo)
    return {"rmse": rmse(pred, yt, lo, hi), "epochs": len(history.loss),
            "best_epoch": es.best_epoch + 1, "wall_s": wall, "reload_equal": same,
            "seed_rmse_mean": float(per_seed.mean()), "seed_rmse_std": float(per_seed.std(ddof=1)),
            "seeds": seeds, "wall_s_replicas": wall_replicas,
            "stopped": np.sum(np.isfinite(h.loss), axis=1).tolist()}


def keras_run(data, seeds: int) -> dict:
    import keras

    x, y, xt, yt, lo, hi = data
    out = []
    t = time.perf_counter()
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((WINDOW, 1)), keras.layers.LSTM(32),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        es = keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE,
                                           restore_best_weights=True)
        hist = model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_split=0.2,
                         callbacks=[es], verbose=0)
        pred = model.predict(xt, verbose=0)
        out.append((rmse(pred, yt, lo, hi), len(hist.history["loss"])))
    r = np.array([o[0] for o in out])
    return {"rmse_first": float(r[0]), "epochs_first": out[0][1],
            "seed_rmse_mean": float(r.mean()), "seed_rmse_std": float(r.std(ddof=1)) if seeds > 1
            else 0.0, "seeds": seeds, "wall_s": time.perf_counter() - t}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--keras-seeds", type=int, default=3)
    args = parser.parse_args(argv)
    data = load()
    x, y, xt, yt, lo, hi = data
    persistence = rmse(xt[:, -1, 0], yt, lo, hi)
    print(f"El Nino: {len(x)} training / {len(xt)} test windows of {WINDOW} months; "
          f"persistence RMSE {persistence:.3f} C")
    j = jaxseq_run(data, args.seeds)
    print(f"jaxseq: RMSE {j['rmse']:.3f} C (seed 0; stopped after {j['epochs']} epochs, best "
          f"{j['best_epoch']}; {j['wall_s']:.1f} s); reload predicts bitwise equal: "
          f"{j['reload_equal']}")
    print(f"jaxseq: {j['seeds']} seeds in one program: RMSE {j['seed_rmse_mean']:.3f} ± "
          f"{j['seed_rmse_std']:.3f} C ({j['wall_s_replicas']:.1f} s; epochs run per seed "
          f"{j['stopped']})")
    if args.keras_seeds:
        k = keras_run(data, args.keras_seeds)
        print(f"Keras:  RMSE {k['rmse_first']:.3f} C (seed 0; {k['epochs_first']} epochs); "
              f"{k['seeds']} seeds: {k['seed_rmse_mean']:.3f} ± {k['seed_rmse_std']:.3f} C "
              f"({k['wall_s']:.1f} s)")


if __name__ == "__main__":
    main()
