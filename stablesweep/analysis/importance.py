"""What drives divergence: Optuna's parameter importance on a 0/1 divergence target, over a plain
table of trials (a row a trial, its params as columns named by their dotted config keys, and its
`verdict`). Used by `analysis.region.analyze`."""
from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from stablesweep.vocab import DIVERGED, LR_KEY, STABLE, STALLED, VERDICT, format_value, py, short_key


def failing_values(df: pd.DataFrame, keys: list[str], lr_key: str | None) -> list[tuple[str, Any, str]]:
    """The categorical values that fail at every lr tried, while another value of the same axis
    trained: (key, value, the sentence that says so). A failure is a divergence or a stall; the
    value must have been tried at two lrs at least. Such a value is the cause of its failures,
    not an lr boundary."""
    if not len(df) or not lr_key or lr_key not in df.columns:
        return []
    out = []
    for k in keys:
        if k not in df.columns:
            continue
        col = df[k].map(lambda v: repr(py(v)))
        for rep in sorted(set(col), key=str):
            mine = df[col == rep]
            judged = mine[mine[VERDICT].isin([STABLE, STALLED, DIVERGED])]
            lrs = sorted({float(x) for x in judged[lr_key].dropna()})
            others = df[(col != rep) & (df[VERDICT] == STABLE)]
            if len(lrs) < 2 or (judged[VERDICT] == STABLE).any() or not len(others):
                continue
            v = py(mine[k].iloc[0])
            out.append((k, v, f"{short_key(k)}={format_value(v)} fails at every lr tried ({len(judged)} runs, "
                              f"lr {lrs[0]:.3g}..{lrs[-1]:.3g}): cause {short_key(k)}"))
    return out


def uncovered(keys: list[str], ran: list[dict[str, Any]], distributions: dict | None) -> list[str]:
    """The combinations of the categorical axes of the search space (`distributions`, Optuna's, one
    per key; those with `choices`) that no trial ran (`ran`: the combinations that did), labelled
    as a group is (`clip=none masking=slice`)."""
    import itertools

    axes = [(k, list(distributions[k].choices)) for k in keys
            if distributions and hasattr(distributions.get(k), "choices")]
    if not axes:
        return []
    seen = {tuple(repr(py(r.get(k))) for k, _ in axes) for r in ran}
    return [" ".join(f"{short_key(k)}={format_value(v)}" for (k, _), v in zip(axes, combo))
            for combo in itertools.product(*(c for _, c in axes)) if tuple(repr(py(v)) for v in combo) not in seen]


def not_boundary_lines(causes: list[str], missing: list[str], markdown: bool = False) -> list[str]:
    """What the region says apart from its lr boundaries: the values that fail at every lr tried
    (`failing_values`) and the combinations no trial ran (`uncovered`); a section in `markdown`."""
    gap = "combinations of the space no trial ran (nothing is known of them): "
    if not markdown:
        return [f"cause: {c}" for c in causes] + ([f"not covered: {gap}{', '.join(missing)}"] if missing else [])
    if not causes and not missing:
        return []
    return ["## Not an lr boundary", "", *(f"- {c}" for c in causes),
            *([f"- {gap}" + ", ".join(f"`{u}`" for u in missing)] if missing else []), ""]


def divergence_importance(df: pd.DataFrame, params: list[str], distributions: dict | None = None
                          ) -> tuple[dict[str, float], str]:
    """Which params drive divergence: Optuna's fANOVA evaluator on a 0/1 target (1 = diverged),
    over the trials that reached a verdict, in a throwaway in-memory study. fANOVA needs
    scikit-learn; without it, PED-ANOVA with the "good" quantile set to exactly the stable
    trials. Empty when there is nothing to explain (one class only, or too few trials).

    A categorical value that fails at every lr tried (`failing_values`) is named as the cause
    instead: fANOVA then runs over the other trials only (where the value's failures would be
    blamed on whatever else it was sampled with, lr included), and the method says so."""
    lr_key = LR_KEY if LR_KEY in params else None
    causes = failing_values(df, [k for k in params if k != lr_key and not _continuous((distributions or {}).get(k))],
                            lr_key)
    if causes:
        mask = pd.Series(False, index=df.index)
        for k, v, _ in causes:
            mask |= df[k].map(lambda x: repr(py(x))) == repr(v)
        imp, method = divergence_importance(df[~mask], params, distributions)
        said = "; ".join(text for _, _, text in causes)
        return imp, (f"{method}, over the other trials; {said}" if method else said)
    return _importance(df, params, distributions)


def _continuous(dist) -> bool:
    return dist is not None and not hasattr(dist, "choices")


def _importance(df: pd.DataFrame, params: list[str], distributions: dict | None) -> tuple[dict[str, float], str]:
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
