"""`stablesweep data synth`, `check`, `cache` and `bench` as a user runs them (the first synth a
subprocess: the real entry point; the rest in this process, conftest's `cli`)."""
import subprocess
import sys


def test_synth_then_check_then_break_a_label(tmp_path, cli):
    out = tmp_path / "syn"
    p = subprocess.run([sys.executable, "-m", "stablesweep", "data", "synth", "--out", str(out), "--scale", "0.01",
                        "--per-class", "4", "--image-size", "16"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (out / "config.yaml").exists() and (out / "food2k_train.jsonl").exists()
    p = cli("data", "check", out / "config.yaml")
    assert p.returncode == 0 and "labels and images: ok" in p.stdout
    lines = (out / "veg200_val.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"label": 0', '"label": 2')  # veg200 has 2 classes at this scale
    (out / "veg200_val.jsonl").write_text("\n".join(lines) + "\n")
    p = cli("data", "check", out / "config.yaml")
    assert p.returncode == 1
    assert "veg200: veg200_val.jsonl:3: label 2 is outside [0, 2)" in p.stdout


def test_synth_bad_scale_is_exit_2(tmp_path, cli):
    p = cli("data", "synth", "--out", tmp_path / "x", "--scale", "0")
    assert p.returncode == 2 and "scale must be positive" in p.stderr


def test_cache_then_bench_as_a_user_runs_them(tmp_path, cli):
    from tests.data.conftest import jpeg_config

    cfg = jpeg_config(tmp_path, {"a": (3, 40), "b": (2, 24)}, val=6, model={"name": "small_cnn"},
                      data={"cache": "cache"})
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    p = cli("data", "cache", tmp_path / "config.yaml")
    assert p.returncode == 0, p.stderr
    assert f"cache: {tmp_path / 'cache'}: 4 split(s), 89.0 KiB; built 4 in" in p.stdout
    assert "a train" in p.stderr + p.stdout  # the progress bar (tqdm on stderr, else printed lines)
    p = cli("data", "cache", tmp_path / "config.yaml")
    assert p.returncode == 0 and "built 0 in" in p.stdout and "4 already there" in p.stdout
    p = cli("data", "cache", tmp_path / "config.yaml", "--set", "data.cache=off")
    assert p.returncode == 2 and "data.cache is off" in p.stderr
    p = cli("data", "bench", tmp_path / "config.yaml", "--model", "--steps", "4", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    for row in ("| input, decoding the files (cache cold) |", "| input, from the cache (warm) |",
                "| training step, decoding the files (cache cold) |", "| training step, from the cache (warm) |"):
        assert row in p.stdout
    assert "training.num_workers is 0: the training process decodes the images itself" in p.stdout
