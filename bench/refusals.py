"""How fast bad input is refused: each of a set of bad inputs of `sweep` and `ramp` (a config, a
space, the data, the run options) run as the CLI in a subprocess, timed from start to exit; each
must exit 2 with the place named and nothing written. Prints a markdown table (the figure in
docs/reliability.md).

    python bench/refusals.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
QUICK = ROOT / "search_spaces" / "quick.yaml"


def fixtures(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(what, CLI arguments, a piece of the message) of each bad input."""
    (tmp / "bad.yaml").write_text("training:\n  lr: [1\n")
    (tmp / "unknown_space.yaml").write_text("training.lr: {loguniform: [1.0e-3, 1.0]}\ntraining.max_grad_nrom: {choice: [null, 1.0]}\n")
    (tmp / "impossible_space.yaml").write_text("training.lr: {loguniform: [1.0, 1.0e-3]}\n")
    (tmp / "bad_dist.yaml").write_text("training.lr: {lognormal: [1.0e-3, 1.0]}\n")
    img = tmp / "img"
    img.mkdir(exist_ok=True)
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(img / f"{i}.png")
    (tmp / "labels.jsonl").write_text("".join(f'{{"image": "img/{i}.png", "label": {i}}}\n' for i in range(4)))
    (tmp / "missing.jsonl").write_text("".join(f'{{"image": "img/{i}.png", "label": {i % 2}}}\n' for i in range(4))
                                       + '{"image": "img/gone.png", "label": 1}\n')
    (tmp / "nolabel.jsonl").write_text("".join(f'{{"image": "img/{i}.png", "label": {i % 2}}}\n' for i in range(3))
                                       + '{"image": "img/3.png", "class": 1}\n')
    man = ("training: {{lr: 1.0e-3, steps: 10}}\nmodel: {{name: small_cnn}}\n"
           "datasets:\n  dataset_configs:\n    d: {{num_classes: 2, train: {train}, val: {train}}}\n")
    (tmp / "labels.yaml").write_text(man.format(train="labels.jsonl"))
    (tmp / "missing.yaml").write_text(man.format(train="missing.jsonl"))
    (tmp / "nolabel.yaml").write_text(man.format(train="nolabel.jsonl"))
    out = str(tmp / "out")
    sweep = ["sweep", str(DEMO), "--space", str(QUICK), "--out", out]
    return [
        ("config: YAML syntax error", ["sweep", str(tmp / "bad.yaml"), "--space", str(QUICK), "--out", out], "YAML"),
        ("config: unknown key (--set)", [*sweep, "--set", "training.lrr=1"], "training.lrr"),
        ("space: unknown key", ["sweep", str(DEMO), "--space", str(tmp / "unknown_space.yaml"), "--out", out],
         "max_grad_nrom"),
        ("space: unknown distribution", ["sweep", str(DEMO), "--space", str(tmp / "bad_dist.yaml"), "--out", out],
         "lognormal"),
        ("space: impossible (lo > hi)", ["sweep", str(DEMO), "--space", str(tmp / "impossible_space.yaml"),
                                         "--out", out], "training.lr"),
        ("data: label out of range", ["sweep", str(tmp / "labels.yaml"), "--space", str(QUICK), "--out", out],
         "outside"),
        ("data: missing image", ["sweep", str(tmp / "missing.yaml"), "--space", str(QUICK), "--out", out], "gone.png"),
        ("data: manifest line without its label key", ["sweep", str(tmp / "nolabel.yaml"), "--space", str(QUICK),
                                                       "--out", out], "missing key 'label'"),
        ("data: label out of range (ramp)", ["ramp", str(tmp / "labels.yaml"), "--out", out], "outside"),
        ("run: --gpus-per-trial 3, no GPU", [*sweep, "--gpus-per-trial", "3"], "--gpus-per-trial"),
        ("run: --samples 0", [*sweep, "--samples", "0"], "--samples 0"),
        ("ramp: --lr-start > --lr-stop", ["ramp", str(DEMO), "--lr-start", "1", "--lr-stop", "0.1", "--out", out],
         "lr-start"),
        ("ramp: --gpus-per-trial 3, no GPU", ["ramp", str(DEMO), "--gpus-per-trial", "3", "--out", out],
         "--gpus-per-trial"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (the worst is reported)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    failed = 0
    print(f"{platform.node() and ''}{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{args.repeat} runs each, the worst shown\n")
    print("| bad input | exit | worst s | message |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        worst_all = 0.0
        for what, argv, piece in fixtures(tmp):
            times, rc, msg = [], None, ""
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                p = subprocess.run([sys.executable, "-m", "stablesweep", *argv], capture_output=True, text=True,
                                   cwd=tmp, env=env, timeout=300)
                times.append(time.perf_counter() - t0)
                rc, msg = p.returncode, (p.stderr.strip().splitlines() or [""])[-1]
            ok = rc == 2 and piece in p.stderr and not (tmp / "out").exists()
            failed += not ok
            worst_all = max(worst_all, max(times))
            print(f"| {what} | {rc}{'' if ok else ' FAILED'} | {max(times):.2f} | {msg[:110].replace('|', '/')} |",
                  flush=True)
        print(f"\nworst: {worst_all:.2f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
