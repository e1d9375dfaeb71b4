"""How many repeats are enough, and comparing two models honestly.

`repeats_curve(scores)`: the mean of the first n scores, its standard error and a bootstrap
interval, for n = 1..N. `compare(a, b)`: the difference of means with a bootstrap interval, a
test (Welch's t unpaired; paired t and Wilcoxon signed-rank when the same splits and seeds were
used; scipy, the `[stats]` extra) and an effect size, and a verdict that never claims a
difference its interval does not support.
"""

from __future__ import annotations

import math

import numpy as np

from jaxseq.evaluation.replicas import as_scores, bootstrap_means, check_bootstrap


def repeats_curve(scores, *, n_boot: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """For n = 1..N repeats (scores in the order they were run): the mean of the first n, its
    standard error (std ddof=1 / sqrt(n); NaN for n = 1) and a 95% percentile-bootstrap
    interval of that mean. Where the interval stops narrowing, more repeats buy little."""
    v = as_scores(scores, "scores", "repeats_curve")
    check_bootstrap(n_boot, seed, "repeats_curve")
    if v.size < 1 or not np.all(np.isfinite(v)):
        raise ValueError("repeats_curve expects finite scores (leave failed runs out first).")
    n = np.arange(1, v.size + 1)
    means = np.cumsum(v) / n
    sem = np.array([v[:k].std(ddof=1) / math.sqrt(k) if k > 1 else np.nan for k in n])
    lo, hi = np.array([np.percentile(bootstrap_means(v[:k], n_boot, seed), [2.5, 97.5])
                       for k in n]).T
    return {"n": n, "mean": means, "sem": sem, "ci_low": lo, "ci_high": hi}


def compare(scores_a, scores_b, *, paired: bool = False, n_boot: int = 10_000, seed: int = 0,
            lower_is_better: bool = True, alpha: float = 0.05) -> dict:
    """Compare two models' scores (errors by default: lower is better).

    Returns {"diff": mean(a) - mean(b), "ci95": bootstrap interval of the diff, "test",
    "statistic", "p_value" (Welch's t unpaired; paired t when `paired`, plus "wilcoxon_p"),
    "effect_size" (Cohen's d: pooled sd unpaired, sd of the differences paired), "verdict"}.
    `paired` needs the same splits and seeds, in the same order, for both models.
    The verdict names a better model only when the interval excludes 0 AND the test's p-value
    is below `alpha`; an interval that excludes 0 with p >= alpha (typical of 2-5 repeats,
    whose bootstrap interval is too narrow) is reported as "not established".
    """
    from scipy import stats

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"compare expects alpha to be a float in (0, 1); got {alpha!r}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"compare expects alpha in (0, 1); got {alpha!r}.")
    check_bootstrap(n_boot, seed, "compare")
    a, b = as_scores(scores_a, "scores_a", "compare"), as_scores(scores_b, "scores_b", "compare")
    if a.size < 2 or b.size < 2 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("compare expects at least 2 finite scores per model.")
    if paired:
        if a.size != b.size:
            raise ValueError(f"compare(paired=True) expects as many scores for both models; "
                             f"got {a.size} and {b.size}.")
        d = a - b
        boot = bootstrap_means(d, n_boot, seed)
        t = stats.ttest_rel(a, b)
        out = {"test": "paired t", "statistic": float(t.statistic), "p_value": float(t.pvalue),
               "wilcoxon_p": float(stats.wilcoxon(a, b).pvalue),
               "effect_size": float(d.mean() / d.std(ddof=1))}
    else:
        rng = np.random.default_rng(seed)  # one stream for both resamples
        boot = (a[rng.integers(0, a.size, (n_boot, a.size))].mean(axis=1)
                - b[rng.integers(0, b.size, (n_boot, b.size))].mean(axis=1))
        t = stats.ttest_ind(a, b, equal_var=False)
        pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1))
                           / (a.size + b.size - 2))
        out = {"test": "Welch t", "statistic": float(t.statistic), "p_value": float(t.pvalue),
               "effect_size": float((a.mean() - b.mean()) / pooled)}
    diff = float(a.mean() - b.mean())
    lo, hi = (float(q) for q in np.percentile(boot, [2.5, 97.5]))
    if lo <= 0.0 <= hi:
        verdict = (f"no difference the data support: the 95% interval of mean(A) - mean(B), "
                   f"[{lo:.4g}, {hi:.4g}], contains 0")
    elif not out["p_value"] < alpha:  # NaN p never names a winner
        # A percentile bootstrap of a few repeats is too narrow (it cannot see variation the
        # sample did not show): with 3 seeds it excludes 0 where the t-test gives p ~ 0.1.
        verdict = (f"not established: the bootstrap interval of mean(A) - mean(B), "
                   f"[{lo:.4g}, {hi:.4g}], excludes 0 but {out['test']} p = "
                   f"{out['p_value']:.3g} >= {alpha}; with {min(a.size, b.size)} repeats the "
                   "bootstrap interval is too narrow: run more repeats")
    else:
        better = "A" if (diff < 0) == lower_is_better else "B"
        verdict = (f"{better} is better by {abs(diff):.4g} on average (95% interval of "
                   f"mean(A) - mean(B): [{lo:.4g}, {hi:.4g}]; {out['test']} p = "
                   f"{out['p_value']:.3g}, effect size {out['effect_size']:.2f})")
    return {"diff": diff, "ci95": (lo, hi), **out, "verdict": verdict}
