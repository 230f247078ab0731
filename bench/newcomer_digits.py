"""Two small real image datasets for the README's "your own data" walk-through, made from
scikit-learn's bundled handwritten digits (no download): `low`, a JSONL manifest of the digits 0-4
(700 train and 201 val images with the other split), and `high`, class folders of the digits 5-9
(`high/train/d5/...`, `high/val/...`); 8x8 images upscaled to 32 px RGB PNGs.

    python bench/newcomer_digits.py data/mine
    stablesweep init data/mine --model small_cnn --image-size 32
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    rows: dict[str, list] = {"train": [], "val": []}
    for n, i in enumerate(order):
        img = Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).resize((32, 32)).convert("RGB")
        split, label = ("val" if n % 5 == 0 else "train"), int(digits.target[i])
        if label < 5:
            path = root / "img" / f"{n}.png"
            rows[split].append({"image": f"img/{n}.png", "label": label})
        else:
            path = root / "high" / split / f"d{label}" / f"{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    for split, r in rows.items():
        (root / f"low_{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in r))
    print(f"{root}: low (manifest, {len(rows['train'])} train), high (class folders)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
