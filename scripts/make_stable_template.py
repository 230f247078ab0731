"""Regenerate configs/multi_dataset_stable.yaml from a real sweep on the synthetic data.

    python scripts/make_stable_template.py        (or: make stable-template)

1. `stablesweep data synth --out data/synth --scale 0.02` (PNG + JSONL manifests + config)
2. `stablesweep sweep data/synth/config.yaml --space search_spaces/quick.yaml --samples 16 --no-asha`
3. the sweep's recommended.yaml (the best stable setting, lr at most half the smallest diverged
   lr of its combination), manifest paths made relative to configs/, with this provenance on top.
"""
from __future__ import annotations

import datetime as _dt
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "data" / "synth"
OUT = ROOT / "runs" / "template"
TARGET = ROOT / "configs" / "multi_dataset_stable.yaml"


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "stablesweep", *args], check=True, cwd=ROOT)


def main() -> None:
    sh("data", "synth", "--out", str(SYNTH), "--scale", "0.02")
    name = f"template-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    sh("sweep", str(SYNTH / "config.yaml"), "--space", "search_spaces/quick.yaml", "--samples", "16",
       "--no-asha", "--sampler", "qmc", "--out", str(OUT), "--name", name)
    rec_path = OUT / name / "recommended.yaml"
    text = rec_path.read_text()
    header = "".join(ln + "\n" for ln in text.splitlines() if ln.startswith("#"))
    raw = yaml.safe_load(text)
    for d in raw["datasets"]["dataset_configs"].values():
        for split in ("train", "val"):
            if d.get(split):
                d[split] = str(Path("..") / SYNTH.relative_to(ROOT) / d[split])
    top = ("# A stable starting point for the six-dataset setup, generated from a real sweep on synthetic data:\n"
           "#   python scripts/make_stable_template.py      (make stable-template)\n"
           f"# generated {_dt.date.today()}; sweep {name}; the sweep's own notes follow.\n"
           "# Point dataset_configs at your manifests, then check the lr for YOUR data and budget:\n"
           "#   stablesweep diagnose configs/multi_dataset_stable.yaml && stablesweep ramp ...\n")
    TARGET.write_text(top + header + yaml.safe_dump(raw, sort_keys=False))
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
