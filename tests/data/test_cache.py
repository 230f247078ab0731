"""The decoded-image cache: the same batches bit for bit, built once, never stale, never half-read.

Faults: a directory that is not writable, a full disk (a small tmpfs when this test may mount one,
and a file-size limit in a subprocess), a cache file truncated or edited, an image changed after
the build, the builder killed half-way, several builders at once.
"""
from __future__ import annotations

import itertools
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablesweep.config import config_from_dict
from stablesweep.data import DataError, build_data
from stablesweep.data.cache import CachedSource, check, checked_rows, keep_free, source_key
from stablesweep.data.images import decode
from stablesweep.data.manifests import FileSource

from .conftest import jpeg_config

ROOT = Path(__file__).resolve().parents[2]


def take(it, n):
    return list(itertools.islice(it, n))


def assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert torch.equal(x.dataset_ids, y.dataset_ids) and x.segments == y.segments


def with_cache(cfg, value: str):
    return config_from_dict(cfg.to_dict(), [f"data.cache={value}"], source=cfg.source, base_dir=cfg.base_dir)


def u8_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.u8")) if d.exists() else []


def leftovers(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("*") if ".tmp." in p.name) if d.exists() else []


# ---- same batches, built once ---------------------------------------------------------------

def test_same_seed_same_batches_with_or_without_the_cache(root, cache_dir):
    cfg = jpeg_config(root, {"a": (3, 30), "b": (2, 20)}, val=6, training={"steps": 10})  # reads 80 >= 50
    off = build_data(with_cache(cfg, "off"))
    assert all(isinstance(s, FileSource) for s in off.train_set.sources)
    logs = []
    on = build_data(cfg, log=logs.append)
    assert all(isinstance(s, CachedSource) for s in on.train_set.sources)
    assert all(isinstance(e.src, CachedSource) for e in on.eval_sets.values())
    assert len(u8_files(cache_dir)) == 4 and not leftovers(cache_dir)  # a file a split: 2 train, 2 val
    assert any("built a-train-16px-" in m for m in logs)
    reference = take(off.train_batches(8, seed=5), 14)  # 6 steps an epoch: crosses two epochs
    assert reference[0].images.dtype == torch.uint8
    assert_same(reference, take(on.train_batches(8, seed=5), 14))
    assert_same(reference, take(on.train_batches(8, seed=5, num_workers=2), 14))
    assert_same(reference[9:], take(on.train_batches(8, seed=5, start_step=9), 5))  # resumed
    for name in ("a", "b"):
        assert_same(list(off.eval_batches(name, 4)), list(on.eval_batches(name, 4, num_workers=2)))
    again = []
    build_data(cfg, log=again.append)  # the second run reads what the first built
    assert not any("built" in m for m in again) and len(u8_files(cache_dir)) == 4


def test_auto_builds_for_a_run_that_reads_its_train_set_and_reads_whatever_is_there(root, cache_dir):
    cfg = jpeg_config(root, {"a": (3, 40)}, training={"steps": 2})  # reads 16 of 40 images: not worth a build
    short = build_data(cfg)
    assert isinstance(short.train_set.sources[0], FileSource) and not u8_files(cache_dir)
    full = config_from_dict(cfg.to_dict(), ["training.steps=5"], source=cfg.source, base_dir=cfg.base_dir)
    assert isinstance(build_data(full).train_set.sources[0], CachedSource)  # 40 of 40: builds
    assert isinstance(build_data(cfg).train_set.sources[0], CachedSource)  # the short run now reads it


def test_a_path_resolves_against_the_config_and_always_builds(root, cache_dir):
    cfg = jpeg_config(root, {"a": (3, 40)}, training={"steps": 1}, data={"cache": "mycache"})
    data = build_data(cfg)
    assert isinstance(data.train_set.sources[0], CachedSource)
    assert len(u8_files(root / "mycache")) == 1 and not u8_files(cache_dir)


@pytest.mark.parametrize("steps, builds", [(2, False), (5, True)])
def test_a_drivers_preflight_caches_as_build_data_would_and_counts_the_same_images(root, cache_dir, steps, builds):
    """A sweep's or ramp's driver checks and caches its data without torch (`preflight`): the cache
    its trials then read is built when `build_data` would build it (auto: the run reads its train
    set at least once), for train and evaluated val splits, and the train set's size is the same."""
    from stablesweep.data.check import preflight

    cfg = jpeg_config(root, {"a": (3, 40)}, val=6, training={"steps": steps})  # 16 or 40 of 40 images
    assert preflight(cfg) == 40
    assert len(u8_files(cache_dir)) == (2 if builds else 0)
    data = build_data(cfg)
    assert data.train_size == 40
    assert isinstance(data.train_set.sources[0], CachedSource) is builds
    assert len(u8_files(cache_dir)) == (2 if builds else 0)  # read, not built again


def test_synthetic_data_is_not_cached_and_off_is_off(root, cache_dir):
    from .conftest import synthetic_cfg

    build_data(synthetic_cfg(root, {"a": (2, 8)}))
    build_data(jpeg_config(root, {"a": (3, 40)}, training={"steps": 10}, data={"cache": "off"}))
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


# ---- never stale, never wrong pixels -----------------------------------------------------------

def _damage(path: Path, how: str, n: int, image_size: int) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-100])
    elif how == "header":
        path.write_bytes(data.replace(b'"shape": [40,', b'"shape": [41,', 1))  # same length
    elif how == "crc table":
        b = bytearray(data)
        b[4096] ^= 0xFF
        path.write_bytes(bytes(b))
    else:  # a sampled row: the check on open sees it
        b = bytearray(data)
        b[len(data) - 3 * image_size * image_size + 5] ^= 0x01  # the last row
        path.write_bytes(bytes(b))


@pytest.mark.parametrize("how", ["truncated", "header", "crc table", "sampled row"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(root, cache_dir, how):
    cfg = jpeg_config(root, {"a": (3, 40)})
    reference = take(build_data(with_cache(cfg, "off")).train_batches(8, seed=1), 6)
    build_data(cfg)
    [path] = u8_files(cache_dir)
    _damage(path, how, 40, 16)
    logs = []
    data = build_data(cfg, log=logs.append)
    assert any(f"{path} is not used" in m for m in logs), logs
    assert any(f"built {path.name}" in m for m in logs)
    src = data.train_set.sources[0]
    assert check(path, source_key(src.source, 16), 40, 16)[0] is not None  # whole again
    assert_same(reference, take(data.train_batches(8, seed=1), 6))


def test_an_edited_row_the_open_check_misses_is_caught_when_read(root, cache_dir):
    cfg = jpeg_config(root, {"a": (3, 100)}, training={"steps": 13})  # 100 rows: the open check samples 64
    build_data(cfg)
    [path] = u8_files(cache_dir)
    row = next(i for i in range(100) if i not in set(checked_rows(100).tolist()))
    b = bytearray(path.read_bytes())
    start = len(b) - (100 - row) * 3 * 16 * 16
    b[start:start + 10] = bytes(10)
    path.write_bytes(bytes(b))
    data = build_data(cfg)  # the sample passes: opened
    src = data.train_set.sources[0]
    assert isinstance(src, CachedSource)
    with pytest.warns(UserWarning, match=f"row {row} .* does not match its checksum"):
        batch = data.train_set.__getitems__([row, 0])
    assert torch.equal(batch.images[0], decode(src.source.paths[row], 16))  # the file's pixels, not the cache's
    assert not path.exists() and path.with_suffix(".corrupt").exists()  # moved aside: the next run rebuilds
    logs = []
    again = build_data(cfg, log=logs.append)
    assert any(f"built {path.name}" in m for m in logs)
    assert torch.equal(again.train_set.sources[0].pixels(row), decode(src.source.paths[row], 16))


def test_an_image_changed_after_the_build_changes_the_key(root, cache_dir):
    cfg = jpeg_config(root, {"a": (3, 40)})
    first = build_data(cfg).train_set.sources[0]
    image = Path(first.source.paths[3])
    before = first.pixels(3)
    Image.new("RGB", (40, 30), (250, 10, 10)).save(image, quality=90)
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock still sees the change
    logs = []
    second = build_data(cfg, log=logs.append).train_set.sources[0]
    assert second.path != first.path and len(u8_files(cache_dir)) == 2
    assert any("built" in m for m in logs)
    after = second.pixels(3)
    assert torch.equal(after, decode(image, 16)) and not torch.equal(after, before)


def test_a_whole_cache_stands_in_for_the_image_checks_until_an_image_changes(root, cache_dir, monkeypatch):
    """A trial's pre-flight does not open every image again when their decoded cache is
    whole and keyed to the very files; it says so; a changed image brings the check back."""
    from stablesweep.data import manifests, validate_labels

    cfg = jpeg_config(root, {"a": (3, 40)}, data={"verify_images": "header"})
    build_data(cfg)  # builds the cache: every image decoded
    opened = []
    real = manifests.check_image
    monkeypatch.setattr(manifests, "check_image", lambda p, level: opened.append(p) or real(p, level))
    logs = []
    build_data(cfg, log=logs.append)
    assert opened == [] and any("not checked one by one (a train" in m for m in logs)
    assert "read from their whole decoded-image cache" in validate_labels(cfg).format()
    cut = Path(manifests.scan(cfg, "none")[1][("a", "train")].paths[2])
    cut.write_bytes(cut.read_bytes()[:200])  # another size: another key
    rep = validate_labels(cfg)
    assert len(opened) == 40 and rep.splits[0].cached is None
    assert [p.line for p in rep.problems] == [3] and "unreadable" in rep.problems[0].message


# ---- a directory that is not writable, a full disk ------------------------------------------------

def test_a_cache_directory_that_is_not_writable(root, monkeypatch):
    (root / "a_file").write_text("not a directory")
    cfg = jpeg_config(root, {"a": (3, 40)}, training={"steps": 10}, data={"cache": "a_file/cache"})
    with pytest.raises(DataError, match=r"data.cache: .*a_file/cache: not a writable directory"):
        build_data(cfg)  # data.cache: PATH: an error naming it, before any work
    monkeypatch.setenv("STABLESWEEP_CACHE_DIR", str(root / "a_file" / "cache"))
    with pytest.warns(UserWarning, match=r"a_file/cache: not a writable directory.*without a cache"):
        data = build_data(with_cache(cfg, "auto"))  # auto: warn, decode as it goes
    assert isinstance(data.train_set.sources[0], FileSource)
    assert next(data.train_batches(8, seed=0)).images.shape == (8, 3, 16, 16)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs (root only; skipped where mounting is not allowed); unmounted at the end."""
    mounted = []

    def mount(name: str, size: str, *options: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        opts = ",".join((f"size={size}",) + options)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounted.append(d)
        return d
    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], check=False)


def test_a_read_only_file_system(root, tmpfs):
    ro = tmpfs("ro", "1m", "ro")
    cfg = jpeg_config(root, {"a": (3, 40)}, data={"cache": str(ro)})
    with pytest.raises(DataError, match=f"data.cache: {ro}: not a writable directory"):
        build_data(cfg)


def test_a_full_disk_small_tmpfs(root, tmpfs, monkeypatch):
    small = tmpfs("small", "32k")  # the cache of 50 images at 16 px needs 46,592 bytes
    cfg = jpeg_config(root, {"a": (3, 50)}, training={"steps": 10}, data={"cache": str(small)})
    with pytest.raises(DataError, match=f"{small}: the cache does not fit: needs 45.5 KiB, 32.0 KiB free"):
        build_data(cfg)
    monkeypatch.setenv("STABLESWEEP_CACHE_DIR", str(small))
    with pytest.warns(UserWarning, match="the cache does not fit"):
        data = build_data(with_cache(cfg, "auto"))
    assert isinstance(data.train_set.sources[0], FileSource)
    assert not any(small.iterdir())


def test_a_large_disk_keeps_1_gib_free_not_5_percent():
    # a 252 GiB disk with 7.4 GiB free builds a 53 KiB cache (5% of it, 12.6 GiB, refused it)
    gib = 1 << 30
    assert keep_free(252 * gib) == gib
    assert keep_free(252 * gib) < 7.4 * gib - 53 * 1024
    assert keep_free(32 * 1024) == int(0.05 * 32 * 1024)
    assert keep_free(10 * gib) == int(0.5 * gib)


def _limit_file_size():  # in the child: writes past 20,000 bytes fail (EFBIG), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_full_disk_while_building_in_a_subprocess(root, tmp_path):
    cfg = jpeg_config(root, {"a": (3, 50)}, training={"steps": 10}, data={"cache": str(tmp_path / "c")})
    (root / "config.yaml").write_text(cfg.to_yaml())
    p = subprocess.run([sys.executable, "-m", "stablesweep", "data", "cache", str(root / "config.yaml")],
                       capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert f"data.cache: {tmp_path / 'c'}: building a-train-16px-" in p.stderr and "File too large" in p.stderr
    assert not u8_files(tmp_path / "c") and not leftovers(tmp_path / "c")  # nothing half-written stays
    code = ("import warnings, sys; from stablesweep.config import load_config; from stablesweep.data import build_data\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    d = build_data(load_config(sys.argv[1], ['data.cache=auto']))\n"
            "print(type(d.train_set.sources[0]).__name__, next(d.train_batches(8, 0)).images.shape[0])\n"
            "print([str(x.message) for x in w])\n")
    env = dict(os.environ, STABLESWEEP_CACHE_DIR=str(tmp_path / "auto"))
    p = subprocess.run([sys.executable, "-c", code, str(root / "config.yaml")], capture_output=True, text=True,
                       timeout=300, preexec_fn=_limit_file_size, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("FileSource 8") and "File too large" in p.stdout and "without a cache" in p.stdout
    assert not u8_files(tmp_path / "auto") and not leftovers(tmp_path / "auto")
    data = build_data(cfg)  # without the limit the same build succeeds
    assert isinstance(data.train_set.sources[0], CachedSource)


# ---- a builder killed half-way, several builders at once ------------------------------------------

CHILD = """
import sys, time
from stablesweep.config import load_config
from stablesweep.data import build_data
from stablesweep.data import cache

data = build_data(load_config(sys.argv[1]), cache=False)
mode = sys.argv[2]
cache.BUILD_BATCH = 25
def progress(src):
    def step(done, total):
        print("progress", done, total, flush=True)
        time.sleep(600 if mode == "stall" else 0.3)
    return step
if mode == "together":
    print("ready", flush=True)
    sys.stdin.readline()
s = data.use_cache(build=True, workers=0, progress=progress, log=lambda m: print(m, flush=True))
print("summary", s["built"], s["read"], flush=True)
"""


def _child(cfg_path: Path, mode: str, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, STABLESWEEP_CACHE_DIR=str(cache))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _reap(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def test_a_builder_killed_half_way_leaves_nothing_that_is_read(root, cache_dir):
    cfg = jpeg_config(root, {"a": (3, 100)}, training={"steps": 13})
    (root / "config.yaml").write_text(cfg.to_yaml())
    child = _child(root / "config.yaml", "stall", cache_dir)
    try:
        line = child.stdout.readline()
        assert line.split()[:2] == ["progress", "25"], (line, child.stderr.read() if child.poll() is not None else "")
        assert len(leftovers(cache_dir)) == 1 and not u8_files(cache_dir)  # a quarter written, under a temp name
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        _reap([child])
    assert child.returncode == -signal.SIGKILL and not u8_files(cache_dir)
    reference = take(build_data(with_cache(cfg, "off")).train_batches(8, seed=2), 5)
    data = build_data(cfg)  # the lock died with the builder; the stale temp file is removed
    assert isinstance(data.train_set.sources[0], CachedSource)
    assert len(u8_files(cache_dir)) == 1 and not leftovers(cache_dir)
    assert_same(reference, take(data.train_batches(8, seed=2), 5))


def test_builders_started_together_build_once(root, cache_dir):
    cfg = jpeg_config(root, {"a": (3, 100)})
    (root / "config.yaml").write_text(cfg.to_yaml())
    children = [_child(root / "config.yaml", "together", cache_dir) for _ in range(3)]
    try:
        for c in children:
            assert c.stdout.readline().strip() == "ready", c.stderr.read() if c.poll() is not None else ""
        for c in children:
            c.stdin.write("go\n")
            c.stdin.flush()
        outs = [c.communicate(timeout=300)[0] for c in children]
    finally:
        _reap(children)
    assert all(c.returncode == 0 for c in children)
    summaries = [next(ln.split()[1:] for ln in out.splitlines() if ln.startswith("summary")) for out in outs]
    assert sorted(summaries) == [["0", "1"], ["0", "1"], ["1", "0"]], outs  # one built, two read
    assert sum("another process is building" in out for out in outs) == 2
    [path] = u8_files(cache_dir)
    assert not leftovers(cache_dir)
    src = build_data(with_cache(cfg, "off")).train_set.sources[0]
    crc, _ = check(path, source_key(src, 16), 100, 16)
    assert crc is not None
    cached = CachedSource(src, path, crc)
    rows = np.arange(100)
    out = torch.empty(100, 3, 16, 16, dtype=torch.uint8)
    cached.read(rows, out)
    assert torch.equal(out, torch.stack([src.pixels(i) for i in rows]))


def test_a_waiting_builder_reads_what_the_first_one_built(root, cache_dir):
    """The lock in one process: a second build of the same file, while the first holds the lock, waits."""
    cfg = jpeg_config(root, {"a": (3, 60)})
    (root / "config.yaml").write_text(cfg.to_yaml())
    child = _child(root / "config.yaml", "slow", cache_dir)
    try:
        assert child.stdout.readline().startswith("progress")  # the child holds the lock, mid-build
        t0 = time.perf_counter()
        logs = []
        data = build_data(cfg, log=logs.append)
        assert time.perf_counter() - t0 > 0.2  # it waited for the child's next chunks
        assert any("another process is building" in m for m in logs) and not any("built" in m for m in logs)
        assert isinstance(data.train_set.sources[0], CachedSource)
        child.communicate(timeout=120)
    finally:
        _reap([child])
    assert child.returncode == 0


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expect", [("off", "off"), ("auto", "auto"), ("/x/y", "/x/y"), ("false", "off")])
def test_cache_key_values(root, value, expect):
    cfg = jpeg_config(root, {"a": (2, 2)})
    assert with_cache(cfg, value).data.cache == expect


def test_cache_key_bad_values(root):
    from stablesweep.config import ConfigError

    cfg = jpeg_config(root, {"a": (2, 2)})
    with pytest.raises(ConfigError, match="data.cache: expected auto, off or a directory"):
        with_cache(cfg, "' '")
