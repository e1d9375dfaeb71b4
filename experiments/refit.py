"""A second `fit` compiles nothing: wall time and compile count of fits after the first.

For each tutorial framing: one cold `fit`, then four more on the same model and optimizer with
another epoch count, verbose level and seed. Prints the cold time, the four warm times and the
number of XLA compilations after the first fit (JAX's backend-compile events).

Command (from the repository root): `python experiments/refit.py`
Expect (2-core AMD EPYC): cold fits 1.2-2 s, the next ones 15-40 ms each, 0 compiles.
"""

import contextlib
import io
import time

import jax

import jaxseq as js

FRAMINGS = [("one_to_one", js.models.one_to_one, 1000, 5),
            ("many_to_one", lambda: js.models.many_to_one(5), 500, 1),
            ("many_to_many", js.models.many_to_many, 1000, 1)]


def main() -> None:
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append(name)
        if name == "/jax/core/compile/backend_compile_duration" else None)
    for framing, build, epochs, batch_size in FRAMINGS:
        x, y = js.problems.frame(js.problems.echo_sequence(5), framing)
        model = build()
        t = time.perf_counter()
        state, _ = js.fit(model, x, y, epochs=epochs, batch_size=batch_size, verbose=0)
        jax.block_until_ready(state.params)
        cold = time.perf_counter() - t
        before = len(compiles)
        runs = [(epochs + 1, 0), (epochs + 7, 0), (epochs // 2, 2), (epochs + 64, 1)]
        warm = []
        for seed, (n, verbose) in enumerate(runs):
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                state, _ = js.fit(model, x, y, epochs=n, batch_size=batch_size,
                                  verbose=verbose, seed=seed)
            jax.block_until_ready(state.params)
            warm.append(time.perf_counter() - t)
        what = " / ".join(f"{n} (verbose {v})" if v else str(n) for n, v in runs)
        print(f"{framing}: cold fit {cold:.2f} s; then epochs {what}: "
              f"{' / '.join(f'{1e3 * w:.1f}' for w in warm)} ms; "
              f"compiles after the first: {len(compiles) - before}")


if __name__ == "__main__":
    main()
