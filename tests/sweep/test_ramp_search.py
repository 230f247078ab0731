"""The ramp's Tune searcher without Tune: what it hands out and when, and its state saved and
restored (the end-to-end runs, on real Ray, are in test_ramp_runner.py and test_ramp_resume.py)."""
from __future__ import annotations

from ray.tune.search import Searcher

from stablesweep.sweep.options import RampOptions
from stablesweep.sweep.ramp import BRACKETED, Setting, ladder
from stablesweep.sweep.ramp_search import RampSearcher
from tests.conftest import diverged_result, stable_result

EDGE = 0.15  # the made-up boundary: stable at or below it, diverged above


def _searcher(**kw) -> RampSearcher:
    opts = RampOptions(config="c.yaml", lr_start=0.01, lr_stop=1000.0, ladder="x10", parallel=2, samples=0, **kw)
    settings = [Setting(key=f"s0{i}", params={"training.precision": p}, rungs=ladder(0.01, 1000.0, "x10"))
                for i, p in enumerate(["fp32", "bf16"])]
    return RampSearcher(settings, opts, budget=20, base_seed=0, echo=None)


def _end(searcher: RampSearcher, trial_id: str, config: dict) -> None:
    ok = config["training.lr"] <= EDGE
    searcher.on_trial_complete(trial_id, stable_result(20, 1.0, finished=True) if ok else diverged_result(5, 3))


def _run_to_the_end(s: RampSearcher, live: dict | None = None, n: int = 0) -> None:
    """End the probes `live` (trial id -> config), then hand out and end batch after batch (new trial
    ids from t`n`) until the searcher is finished."""
    live = dict(live or {})
    while True:
        for t, c in list(live.items()):
            _end(s, t, c)
            del live[t]
        while isinstance(c := s.suggest(f"t{n}"), dict):
            live[f"t{n}"] = c
            n += 1
        if c == Searcher.FINISHED:
            return
        assert live, "nothing running and nothing handed out"


def test_a_settings_next_batch_waits_for_its_last_one_and_settings_do_not_wait_for_each_other():
    s = _searcher()
    handed = {f"t{i}": s.suggest(f"t{i}") for i in range(4)}
    assert [(c["training.precision"], c["training.lr"]) for c in handed.values()] == [
        ("fp32", 0.01), ("fp32", 0.1), ("bf16", 0.01), ("bf16", 0.1)]
    assert s.suggest("t4") is None  # both batches still running
    _end(s, "t0", handed["t0"])
    assert s.suggest("t4") is None  # fp32's batch has one probe left
    _end(s, "t1", handed["t1"])
    nxt = s.suggest("t4")  # fp32 goes on (gallop: rungs 3 and the top), bf16's batch still runs
    assert (nxt["training.precision"], nxt["training.lr"]) == ("fp32", 10.0)
    assert [p.lr for p in s.settings[0].probes] == [0.01, 0.1] and not s.settings[1].probes


def test_saved_and_restored_it_goes_on_and_hands_out_again_what_tune_never_held(tmp_path):
    s = _searcher()
    handed = {f"t{i}": s.suggest(f"t{i}") for i in range(4)}
    for t in ("t0", "t1"):
        _end(s, t, handed[t])
    handed["t4"] = s.suggest("t4")
    s.save(str(tmp_path / "state.pkl"))

    again = _searcher()
    again.tune_trials = {"t0", "t1", "t2", "t3"}  # Tune's state was saved before t4 was made
    again.restore(str(tmp_path / "state.pkl"))
    assert [p.lr for p in again.settings[0].probes] == [0.01, 0.1]
    assert set(again.trials) == {"t0", "t1", "t2", "t3"}
    redo = again.suggest("t5")
    assert (redo["training.precision"], redo["training.lr"]) == (handed["t4"]["training.precision"], 10.0)
    # then to the end: every setting bracketed around EDGE, each lr probed once
    _run_to_the_end(again, {"t2": handed["t2"], "t3": handed["t3"], "t5": redo}, n=6)
    for st in again.settings:
        assert st.status == BRACKETED and st.max_stable <= EDGE < st.min_failed
        assert st.min_failed / st.max_stable <= 1.25 + 1e-9
        lrs = [p.lr for p in st.probes]
        assert len(lrs) == len(set(lrs))
    assert all(r.probe is not None for r in again.trials.values())


def test_a_probes_last_report_is_its_verdict_and_the_next_batch_is_handed_out_at_once():
    s = _searcher()
    handed = {f"t{i}": s.suggest(f"t{i}") for i in range(4)}
    _end(s, "t0", handed["t0"])
    s.on_trial_result("t1", stable_result(10, 1.0, finished=False))  # not its last report
    assert s.suggest("t4") is None
    s.on_trial_result("t1", stable_result(20, 1.0, finished=True))  # its last: Tune has not ended it yet
    assert s.suggest("t4")["training.lr"] == 10.0
    s.on_trial_complete("t1", stable_result(20, 1.0, finished=True))  # then it ends: nothing changes
    assert [p.lr for p in s.settings[0].probes] == [0.01, 0.1]
    # continue mode starts a probe from the last stable one's checkpoint, which comes with the trial's end
    c = _searcher(mode="continue")
    first = c.suggest("t0")
    c.on_trial_result("t0", stable_result(20, 1.0, finished=True))
    assert c.suggest("t2")["training.precision"] == "bf16"  # fp32 waits for t0's end
    c.on_trial_complete("t0", stable_result(20, 1.0, finished=True))
    assert c.suggest("t3")["training.precision"] == first["training.precision"] == "fp32"


def test_the_default_samples_fill_whole_batches():
    for samples, parallel, each in ((None, 2, {4}), (None, 3, {3}), (3, 2, {3})):
        s = _searcher()
        s.opts.samples, s.opts.parallel = samples, parallel
        _run_to_the_end(s)
        assert {sum(p.phase == "sample" for p in st.probes) for st in s.settings} == each, (samples, parallel)
