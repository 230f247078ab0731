"""`stablesweep data synth` and `data check` as a user runs them."""
import subprocess
import sys


def sweep(*args):
    return subprocess.run([sys.executable, "-m", "stablesweep", "data", *args], capture_output=True, text=True,
                          timeout=120)


def test_synth_then_check_then_break_a_label(tmp_path):
    out = tmp_path / "syn"
    p = sweep("synth", "--out", str(out), "--scale", "0.01", "--per-class", "4", "--image-size", "16")
    assert p.returncode == 0, p.stderr
    assert (out / "config.yaml").exists() and (out / "food2k_train.jsonl").exists()
    p = sweep("check", str(out / "config.yaml"))
    assert p.returncode == 0 and "labels and images: ok" in p.stdout
    lines = (out / "veg200_val.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"label": 0', '"label": 2')  # veg200 has 2 classes at this scale
    (out / "veg200_val.jsonl").write_text("\n".join(lines) + "\n")
    p = sweep("check", str(out / "config.yaml"))
    assert p.returncode == 1
    assert "veg200: veg200_val.jsonl:3: label 2 is outside [0, 2)" in p.stdout


def test_synth_bad_scale_is_exit_2(tmp_path):
    p = sweep("synth", "--out", str(tmp_path / "x"), "--scale", "0")
    assert p.returncode == 2 and "scale must be positive" in p.stderr
