"""Check that a change leaves stablesweep's answers as they were.

    python scripts/golden.py capture OUT   # a fixed-seed demo sweep and ramp; into OUT
    python scripts/golden.py compare A B   # exit 0 when captures A and B say the same

The sweep is a 3 x 2 grid (lr 0.01, 1, 1000 x clip none, 1.0) of 20 constant-budget steps without
ASHA; the ramp climbs the x10 ladder from 0.01 to 1000 at 20 steps. Both are deterministic on CPU.
What is compared: stable_region.json and .md, trials.csv, recommended.yaml, ramp.json and .md, the
recommended configs, and every MLflow run's name, params, tags and metrics (run ids, times, paths,
durations and FLOP timings removed, floats to 6 significant digits).
"""
from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = "training.lr: {grid: [0.01, 1.0, 1000.0]}\ntraining.max_grad_norm: {choice: [null, 1.0]}\n"
VOLATILE = re.compile(r"(time|_s$|seconds|duration|date|path|uri|_id$|^id$|run_id|trial_id|hostname|node_ip|pid|"
                      r"started|ended|wall|url|link|dir$|elapsed|timestamp|version|host|git)", re.I)
HEX = re.compile(r"\b[0-9a-f]{8,32}\b")
NUM = re.compile(r"-?\d+\.\d+(?:e[+-]?\d+)?")


def _round(x):
    if isinstance(x, float) and math.isfinite(x) and x != 0:
        return float(f"{x:.6g}")
    return x


def _clean(obj, key=""):
    if key == "importance" and isinstance(obj, dict):  # fANOVA's forest: the ranking's keys only
        return sorted(obj)
    if isinstance(obj, dict):
        return {k: _clean(v, k) for k, v in sorted(obj.items()) if not VOLATILE.search(str(k))}
    if isinstance(obj, list):
        return [_clean(v, key) for v in obj]
    if isinstance(obj, str):
        return _text(obj)
    return _round(obj)


def _text(s: str) -> str:
    s = s.replace(str(ROOT), "<ROOT>")
    s = re.sub(r"(/[\w.-]+)+/(?=(configs|search_spaces)/)", "<ROOT>/", s)  # a checkout elsewhere
    s = re.sub(r"/tmp/\S+|/\S*golden\S*", "<PATH>", s)
    s = re.sub(r"\d{4}-\d{2}-\d{2}[ T_][\d:.\-]+", "<DATE>", s)
    s = re.sub(r"\b\d+(\.\d+)?\s?s\b", "<S>", s)  # wall seconds in text tables
    return HEX.sub("<HEX>", s)


def _markdown(text: str) -> list[str]:
    """Lines of a text file; in a markdown table, wall-time columns blanked, and the importance
    table's values dropped (its forest is not bit-stable across trial orders)."""
    out, blank, importance = [], set(), False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = line.strip("|").split("|")
            if any("compute s" in c or c.strip() == "wall" for c in cells):
                blank = {i for i, c in enumerate(cells) if "compute s" in c or c.strip() == "wall"}
                importance = any("importance" in c for c in cells)
            cells = ["" if i in blank else c for i, c in enumerate(cells)]
            if importance or any("importance" in c for c in cells):
                importance = True
                cells = cells[:1]
            line = "|".join(cells)
        else:
            blank, importance = set(), False
        out.append(_text(line))
    return out


def _table(path: Path) -> list[dict]:
    with path.open() as f:
        return sorted((_clean(dict(r)) for r in csv.DictReader(f)), key=lambda r: json.dumps(r, sort_keys=True))


def _mlflow(db: Path) -> list[dict]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{db}")
    runs = []
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id], max_results=10000):
            metrics = {k: v for k, v in r.data.metrics.items() if not re.search(r"flop|time|_s$|second", k)}
            runs.append(_clean({
                "experiment": exp.name, "name": r.info.run_name, "status": r.info.status,
                "params": r.data.params, "metrics": metrics,
                "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")
                         or k in ("mlflow.runName",)},
                "parent": "mlflow.parentRunId" in r.data.tags,
                "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id)),
            }))
    return sorted(runs, key=lambda r: json.dumps(r, sort_keys=True))


def _files(d: Path, names: list[str]) -> dict:
    out = {}
    for name in names:
        for p in sorted(d.glob(name)):
            rel = str(p.relative_to(d))
            if p.suffix == ".json":
                out[rel] = _clean(json.loads(p.read_text()))
            elif p.suffix == ".csv":
                out[rel] = _table(p)
            else:
                out[rel] = _markdown(p.read_text())
    return out


def capture(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    space = out / "space.yaml"
    space.write_text(SPACE)
    exe = [sys.executable, "-m", "stablesweep"]
    sweep = exe + ["sweep", "configs/demo.yaml", "--space", str(space), "--sampler", "grid", "--no-asha",
                   "--steps", "20", "--set", "training.report_interval=5", "--out", str(out / "sweep"), "--name", "g"]
    ramp = exe + ["ramp", "configs/demo.yaml", "--steps", "20", "--target-steps", "20", "--lr-start", "1e-2", "--lr-stop", "1e3",
                  "--ladder", "x10", "--out", str(out / "ramp"), "--name", "r"]
    for cmd in (sweep, ramp):
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    print(f"captured in {out}")


def answers(out: Path) -> dict:
    """The answers of a capture, normalised (read from its files and MLflow stores)."""
    return {
        "sweep": _files(out / "sweep" / "g", ["stable_region.json", "stable_region.md", "trials.csv",
                                              "recommended.yaml", "recommended/*.yaml"]),
        "sweep_mlflow": _mlflow(out / "sweep" / "mlflow.db"),
        "ramp": _files(out / "ramp" / "r", ["ramp.json", "ramp.md", "recommended/*.yaml"]),
        "ramp_mlflow": _mlflow(out / "ramp" / "mlflow.db"),
    }


def compare(a: Path, b: Path) -> int:
    ja, jb = (json.loads(json.dumps(answers(d.resolve()), sort_keys=True, default=str)) for d in (a, b))
    diffs = []

    def walk(x, y, where):
        if type(x) is not type(y):
            diffs.append(f"{where}: {x!r} != {y!r}")
        elif isinstance(x, dict):
            for k in sorted(set(x) | set(y)):
                if k not in x or k not in y:
                    diffs.append(f"{where}.{k}: only in {'B' if k not in x else 'A'}")
                else:
                    walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            if len(x) != len(y):
                diffs.append(f"{where}: {len(x)} items != {len(y)}")
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        elif x != y:
            diffs.append(f"{where}: {x!r} != {y!r}")

    walk(ja, jb, "")
    for d in diffs[:60]:
        print(d)
    print(f"{len(diffs)} difference(s)" if diffs else "identical")
    return 1 if diffs else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "capture":
        capture(Path(sys.argv[2]).resolve())
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
