"""The decoded-image cache: decode once per node, then every run on it reads uint8 rows from a
memory-mapped file (the page cache keeps them in memory after the first read).

One file per split of a manifest or folder dataset at one image size, `DIR/<dataset>-<split>-<S>px-
<key>.u8`. The key is a sha256 of the format, the image size, the decoder's versions and, for each
image in the split's order, its absolute path, size in bytes and mtime: an image changed, added or
removed, or another image size, is another key, so a stale cache is never found. Labels are not in
the cache (a label edit needs no rebuild).

Layout: a 4096-byte JSON header (key, shape, CRC of the CRC table), the CRC32 of every row (uint32,
padded to 4096 bytes), then the rows, uint8 [N,3,S,S].

Built atomically: under an exclusive lock (fcntl) on `DIR/<name>.lock`, so a second builder on the
node waits, then finds the finished file and reads it; space is reserved first (posix_fallocate: a
full disk fails before any decoding); the rows go to `DIR/<name>.tmp.<pid>`, which is fsync'ed and
renamed to its name (the commit). A half-built file never has the final name, and a builder killed
half-way leaves only a temp file that the next builder removes.

Read: on open, the header (key, shape), the file size, the CRC table's own CRC and a sample of rows
are checked; anything off and the file is not used (rebuilt where building is allowed). Every row
read is checked against its CRC: a mismatch decodes that image from its file instead (right pixels),
warns, and moves the file aside (`<name>.corrupt`) so the next run rebuilds it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import PIL

from .manifests import FileSource
from .problems import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "stablesweep-image-cache/1"
HEADER_BYTES = 4096
SAMPLE_ROWS = 64  # rows whose CRC is checked on open (every row is checked when read)
KEEP_FREE = 0.05  # a build must leave this fraction of the file system free,
KEEP_FREE_CAP = 1 << 30  # or 1 GiB on a file system larger than 20 GiB
BUILD_BATCH = 64

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


def default_dir() -> Path:
    """Where `data.cache: auto` keeps caches: $STABLESWEEP_CACHE_DIR, else
    $XDG_CACHE_HOME/stablesweep/images (~/.cache/stablesweep/images)."""
    env = os.environ.get("STABLESWEEP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stablesweep" / "images"


def cache_dir(cfg) -> Path | None:
    """The cache directory of a config; None when data.cache is off. A relative PATH resolves
    against the config's directory, as manifests do."""
    mode = cfg.data.cache
    if mode == "off":
        return None
    return default_dir() if mode == "auto" else cfg.resolve_path(mode)


def source_key(src: FileSource, image_size: int) -> str:
    """sha256 of what the pixels depend on: image files (path, size, mtime) in order, the size, the decoder."""
    import torchvision  # its version is the decoder's; imported only where a cache file may be used

    h = hashlib.sha256(json.dumps({"format": FORMAT, "image_size": image_size, "pillow": PIL.__version__,
                                   "torchvision": torchvision.__version__}).encode())
    for p in src.paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def row_bytes(image_size: int) -> int:
    return 3 * image_size * image_size


def _layout(n: int, image_size: int) -> tuple[int, int]:
    """(offset of the rows, file size) of a cache of n rows."""
    data = HEADER_BYTES + -(-4 * n // 4096) * 4096
    return data, data + n * row_bytes(image_size)


def _file_name(src: FileSource, image_size: int, key: str) -> str:
    return f"{_stem(src, image_size)}{key[:20]}.u8"


def _stem(src: FileSource, image_size: int) -> str:
    """What the cache files of a split at a size are named by, whatever their key (no glob character)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{src.dataset}-{src.split}")
    return f"{safe}-{image_size}px-"


def checked_rows(n: int) -> np.ndarray:
    """The rows of an n-row cache whose CRC the open check reads: at most SAMPLE_ROWS, spread evenly."""
    return np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).round().astype(np.int64))


# ---- reading ----------------------------------------------------------------------------------

def check(path: Path, key: str, n: int, image_size: int) -> tuple[np.ndarray | None, str]:
    """(the CRC table, "") when `path` is a complete cache of this key, else (None, why not)."""
    data, size = _layout(n, image_size)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                return None, f"{os.fstat(f.fileno()).st_size} bytes, expected {size} (truncated or not ours)"
            try:
                head = json.loads(f.read(HEADER_BYTES).decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                return None, "unreadable header"
            want = {"format": FORMAT, "key": key, "shape": [n, 3, image_size, image_size], "data_offset": data}
            if not isinstance(head, dict) or any(head.get(k) != v for k, v in want.items()):
                return None, "header does not match (another key, shape or format)"
            table = f.read(4 * n)
            if zlib.crc32(table) != head.get("crc_table"):
                return None, "the CRC table is damaged"
            crc = np.frombuffer(table, dtype="<u4").copy()
            rb = row_bytes(image_size)
            for i in checked_rows(n):
                f.seek(data + int(i) * rb)
                if zlib.crc32(f.read(rb)) != crc[i]:
                    return None, f"row {int(i)} does not match its CRC"
    except FileNotFoundError:
        return None, "not there"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    return crc, ""


def whole_cache(cfg, dataset: str, split: str, paths: list[str]) -> Path | None:
    """The cache file of these image files, when it is there and whole (header, CRC table, sampled
    rows): every image in it was decoded when it was built, and its key says none has changed
    since (path, size, mtime). None otherwise, or when data.cache is off."""
    directory = cache_dir(cfg)
    if directory is None or not paths:
        return None
    src = FileSource(dataset, split, "", paths, np.zeros(len(paths), np.int64), None, cfg.data.image_size)
    if not any(directory.glob(_stem(src, cfg.data.image_size) + "*.u8")):
        return None  # no cache of this split at any key: no file to stat, no decoder to import
    try:
        key = source_key(src, cfg.data.image_size)
    except OSError:  # an image gone: the per-image check says which
        return None
    path = directory / _file_name(src, cfg.data.image_size, key)
    crc, _ = check(path, key, len(paths), cfg.data.image_size)
    return path if crc is not None else None


def cache_lookup(cfg):
    """`whole_cache` bound to `cfg`: what `manifests.scan` takes to let a whole cache stand in for
    the image checks of a split."""
    return lambda dataset, split, paths: whole_cache(cfg, dataset, split, paths)


class CachedSource:
    """A file source whose pixels come from its cache file (a read-only memory map)."""

    kind = "file"

    def __init__(self, source: FileSource, path: Path, crc: np.ndarray):
        self.source = source
        self.path = Path(path)
        self.crc = crc
        self.image_size = source.image_size
        self._warned = False
        self._open()

    def _open(self) -> None:
        n, s = len(self.source), self.image_size
        self._rows = np.memmap(self.path, dtype=np.uint8, mode="r", offset=_layout(n, s)[0], shape=(n, 3, s, s))

    def __getstate__(self) -> dict:  # a spawned worker maps the file itself (never pickles the rows)
        return {k: v for k, v in self.__dict__.items() if k != "_rows"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.source)

    @property
    def dataset(self) -> str:
        return self.source.dataset

    @property
    def split(self) -> str:
        return self.source.split

    def label(self, i: int) -> int:
        return self.source.label(i)

    def where(self, i: int) -> str:
        return self.source.where(i)

    def read(self, idx: np.ndarray, out: torch.Tensor) -> None:
        """Rows `idx` into `out` (uint8 [len(idx),3,S,S], contiguous), each checked against its CRC."""
        a = out.numpy()
        np.take(self._rows, idx, axis=0, out=a, mode="clip")  # clip: unbuffered (idx are in range)
        for k, i in enumerate(idx):
            if zlib.crc32(a[k]) != self.crc[i]:
                self._corrupt(int(i))
                out[k] = self.source.pixels(int(i))

    def pixels(self, i: int) -> torch.Tensor:
        import torch

        out = torch.empty(3, self.image_size, self.image_size, dtype=torch.uint8)
        self.read(np.array([i]), out[None])
        return out

    def load(self, i: int) -> torch.Tensor:
        from .images import normalise

        return normalise(self.pixels(i))

    def _corrupt(self, i: int) -> None:
        if self._warned:
            return
        self._warned = True
        aside = self.path.with_suffix(".corrupt")
        try:
            os.replace(self.path, aside)  # this mapping stays valid; the next run does not find the file
        except OSError:
            pass  # already moved by another reader
        warnings.warn(f"image cache {self.path}: row {i} ({self.source.where(i)}) does not match its checksum; "
                      f"decoding it from its file instead; the cache was moved to {aside.name} and the next run "
                      f"rebuilds it", stacklevel=2)


# ---- building ---------------------------------------------------------------------------------

class _Decode:
    """A map-style dataset (what DataLoader reads by index) of a source's decoded images."""

    def __init__(self, source: FileSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.source.pixels(i)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build(src: FileSource, path: Path, key: str, *, workers: int, progress: Progress | None = None,
          log: Log | None = None, force: bool = False) -> tuple[np.ndarray, bool]:
    """Make `path` a complete cache of `src` (key `key`): (its CRC table, whether this call built it).

    Under the directory's lock for this file: a builder that finds the file complete once it holds
    the lock (another process built it meanwhile) reads it, unless `force`. OSError (a full disk, no
    permission) propagates, with the temp file removed; so does a DataError of an image that does
    not decode.
    """
    import torch
    from torch.utils.data import DataLoader

    n, s = len(src), src.image_size
    data, size = _layout(n, s)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (log or (lambda m: None))(f"data.cache: another process is building {path.name}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        crc, _ = (None, "") if force else check(path, key, n, s)
        if crc is not None:
            return crc, False
        for stale in path.parent.glob(path.name + ".tmp.*"):  # left by a builder that died (we hold the lock)
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, size)  # a full disk fails here, before any decoding
                crc = np.zeros(n, dtype="<u4")
                f.seek(data)
                # its own generator: a build leaves the global RNG (the model's initialisation) as it was
                loader = DataLoader(_Decode(src), batch_size=BUILD_BATCH, num_workers=workers,
                                    generator=torch.Generator())
                done = 0
                for rows in loader:
                    a = rows.numpy()
                    for k in range(len(a)):
                        crc[done + k] = zlib.crc32(a[k])
                    f.write(a.data)
                    done += len(a)
                    if progress is not None:
                        progress(done, n)
                table = crc.tobytes()
                head = json.dumps({"format": FORMAT, "key": key, "shape": [n, 3, s, s], "data_offset": data,
                                   "crc_table": zlib.crc32(table), "dataset": src.dataset, "split": src.split,
                                   "source": src.display, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
                f.seek(0)
                f.write(head.encode().ljust(HEADER_BYTES))
                f.write(table)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # the commit: the name appears complete or not at all
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
    return crc, True


def _writable(directory: Path) -> str | None:
    """None when files can be made in `directory` (created if missing), else why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def keep_free(total: int) -> int:
    """The bytes a build leaves free on a file system of `total` bytes: 5% of it, at most 1 GiB."""
    return min(int(KEEP_FREE * total), KEEP_FREE_CAP)


def _fits(directory: Path, need: int) -> str | None:
    """None when `need` bytes fit in `directory`'s file system leaving keep_free() of it free, else why not."""
    du = shutil.disk_usage(directory)
    reserve = keep_free(du.total)
    if du.free - need >= reserve:
        return None
    return (f"needs {size_text(need)}, {size_text(du.free)} free of {size_text(du.total)} "
            f"(a build leaves {size_text(reserve)} free)")


def size_text(n: float) -> str:
    """Bytes for people: 45.5 KiB, 1.1 GiB."""
    k = 0
    while n >= 1024 and k < 3:
        n, k = n / 1024, k + 1
    return f"{n:,.0f} bytes" if k == 0 else f"{n:,.1f} {('KiB', 'MiB', 'GiB')[k - 1]}"


def cached(cfg, sources: list, *, build_missing: bool, log: Log | None = None, workers: int | None = None,
           progress: Callable[[Any], Progress] | None = None, rebuild: bool = False,
           strict: bool = False) -> tuple[list, dict]:
    """`sources` with every file source whose cache is there (or is built now) replaced by a CachedSource,
    and a summary {"read": n, "built": n, "bytes": total, "seconds": build time, "directory": dir}.

    `build_missing`: build the caches that are not there. A cache that cannot be built (a directory
    that is not writable, a full disk) raises a DataError naming the directory with `data.cache: PATH`
    or `strict`; with `data.cache: auto` it warns and leaves those sources uncached. `progress(src)`
    returns the progress callback of one build.
    """
    say = log or (lambda m: None)
    directory = cache_dir(cfg)
    summary = {"read": 0, "built": 0, "bytes": 0, "seconds": 0.0, "directory": directory}
    if directory is None:
        return sources, summary
    explicit = strict or cfg.data.cache != "auto"
    size = cfg.data.image_size
    out = list(sources)
    missing = []
    for k, src in enumerate(sources):
        if not isinstance(src, FileSource) or len(src) == 0:
            continue
        key = source_key(src, size)
        path = directory / _file_name(src, size, key)
        crc, why = (None, "rebuild asked") if rebuild else check(path, key, len(src), size)
        if crc is not None:
            out[k] = CachedSource(src, path, crc)
            summary["read"] += 1
            summary["bytes"] += _layout(len(src), size)[1]
        else:
            if why != "not there":
                say(f"data.cache: {path} is not used: {why}")
            missing.append((k, src, key, path))
    if not missing or not build_missing:
        return out, summary

    def unusable(why: str) -> tuple[list, dict]:
        msg = f"data.cache: {directory}: {why}"
        if explicit:
            raise DataError(f"{cfg.source}: {msg}")
        warnings.warn(f"{msg}; training without a cache for {len(missing)} split(s)", stacklevel=3)
        say(f"{msg}; decoding images as they are read")
        return out, summary

    why = _writable(directory)
    if why is not None:
        return unusable(f"not a writable directory ({why})")
    need = sum(_layout(len(src), size)[1] for _, src, _, _ in missing)
    why = _fits(directory, need)
    if why is not None:
        return unusable(f"the cache does not fit: {why}")
    nproc = workers if workers is not None else len(os.sched_getaffinity(0))
    for k, src, key, path in missing:
        t0 = time.perf_counter()
        try:
            crc, built = build(src, path, key, workers=nproc, progress=progress(src) if progress else None,
                               log=say, force=rebuild)
        except OSError as e:
            return unusable(f"building {path.name} failed: {e.strerror or e}")
        dt = time.perf_counter() - t0
        out[k] = CachedSource(src, path, crc)
        summary["built" if built else "read"] += 1
        summary["bytes"] += _layout(len(src), size)[1]
        if built:
            summary["seconds"] += dt
            say(f"data.cache: built {path.name}: {len(src)} images in {dt:.1f} s")
    return out, summary
