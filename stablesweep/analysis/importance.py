"""What drives divergence: Optuna's parameter importance on a 0/1 divergence target, over a plain
table of trials (a row a trial, its params as columns named by their dotted config keys, and its
`verdict`). Used by `analysis.region.analyze`."""
from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from stablesweep.vocab import DIVERGED, STABLE, VERDICT, py


def divergence_importance(df: pd.DataFrame, params: list[str], distributions: dict | None = None
                          ) -> tuple[dict[str, float], str]:
    """Which params drive divergence: Optuna's fANOVA evaluator on a 0/1 target (1 = diverged),
    over the trials that reached a verdict, in a throwaway in-memory study. fANOVA needs
    scikit-learn; without it, PED-ANOVA with the "good" quantile set to exactly the stable
    trials. Empty when there is nothing to explain (one class only, or too few trials)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    judged = df[df[VERDICT].isin([STABLE, DIVERGED])] if len(df) else df
    n_div = int((judged[VERDICT] == DIVERGED).sum()) if len(judged) else 0
    if len(judged) < 4 or n_div == 0 or n_div == len(judged) or not params:
        return {}, ""
    dists = {}
    for k in params:
        if distributions and k in distributions:
            dists[k] = distributions[k]
            continue
        values = [py(v) for v in judged[k]]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and len(set(values)) > 6:
            lo, hi = float(min(values)), float(max(values))
            dists[k] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
        else:
            dists[k] = CategoricalDistribution(sorted(set(values), key=value_order))
    trials = []
    for _, r in judged.iterrows():
        p = {k: py(r[k]) for k in dists}
        try:
            trials.append(optuna.trial.create_trial(params=p, distributions=dists,
                                                    value=1.0 if r[VERDICT] == DIVERGED else 0.0))
        except ValueError:  # a value outside the given distribution: skip the trial
            continue
    # the forest sees the trials in one order whatever order they finished in: the same trials,
    # the same importance
    trials.sort(key=lambda t: (t.value, [value_order(t.params[k]) for k in dists]))
    if len(trials) < 4:
        return {}, ""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize")
        study.add_trials(trials)
        try:
            import sklearn  # noqa: F401

            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            method = "fANOVA (Optuna) on a 0/1 divergence target"
        except ImportError:
            q = 1.0 - n_div / len(trials)
            evaluator = optuna.importance.PedAnovaImportanceEvaluator(baseline_quantile=q)
            method = "PED-ANOVA (Optuna), stable trials vs all"
        with _quiet_warnings():
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    except (ValueError, RuntimeError) as e:
        logging.getLogger(__name__).warning("divergence importance unavailable: %s", e)
        return {}, ""
    finally:
        optuna.logging.set_verbosity(level)
    return {k: float(v) for k, v in imp.items()}, method


def value_order(v: Any):
    """A sort key for values of any type: None first, then numbers by value, then the rest as text."""
    v = py(v)
    if v is None:
        return (0, 0, "")
    if isinstance(v, (int, float)):
        return (1, float(v), "")
    return (2, 0, str(v))


class _quiet_warnings:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
