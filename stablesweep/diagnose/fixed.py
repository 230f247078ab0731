"""`<config stem>_fixed.yaml`: the config with the findings' setting changes, each commented with
the finding behind it and its old value. Data problems are noted, never "fixed" by the config."""
from __future__ import annotations

import copy
import datetime as _dt
import os
import textwrap
from pathlib import Path

import yaml

from stablesweep.config import ConfigError, check_output_dir, config_from_dict, set_dotted
from stablesweep.vocab import InputError

from .diagnosis import Diagnosis
from .findings import Change, scalar


def _emit(node: dict, path: tuple, indent: int, lines: list[str], comments: dict, inline: dict) -> None:
    pad = " " * indent
    for k, v in node.items():
        p = path + (str(k),)
        for c in comments.get(p, []):
            for wrapped in textwrap.wrap(c, width=max(40, 110 - indent), break_long_words=False,
                                         break_on_hyphens=False) or [""]:
                lines.append(f"{pad}# {wrapped}")
        key = scalar(k) if not isinstance(k, str) or not k.isidentifier() else k
        tail = f"  # {inline[p]}" if p in inline else ""
        if isinstance(v, dict) and v:
            lines.append(f"{pad}{key}:{tail}")
            _emit(v, p, indent + 2, lines, comments, inline)
        elif isinstance(v, (list, tuple)):
            lines.append(f"{pad}{key}: [{', '.join(scalar(x) for x in v)}]{tail}")
        elif isinstance(v, dict):
            lines.append(f"{pad}{key}: {{}}{tail}")
        else:
            lines.append(f"{pad}{key}: {scalar(v)}{tail}")


def _wrapped(text: str) -> list[str]:
    return ["# " + w for w in textwrap.wrap(text, width=100, break_long_words=False, break_on_hyphens=False)]


def fixed_config(diag: Diagnosis, out_dir: str | Path | None = None) -> tuple[Path, str, list[Change]] | None:
    """(path, YAML text, changes) of `<stem>_fixed.yaml`; None when there is nothing to change.
    The text is checked to load as a config before it is returned."""
    changes = diag.changes()
    if not changes:
        return None
    src = diag.config_path
    target = fixed_path(src, out_dir)
    folder = target.parent
    raw = copy.deepcopy(diag.raw)
    comments: dict[tuple, list[str]] = {}
    inline: dict[tuple, str] = {}
    by_code = {f.code: f for f in diag.findings}
    for c in changes:
        set_dotted(raw, c.key, c.new)
        p = tuple(c.key.split("."))
        for code in c.codes:
            f = by_code[code]
            comments.setdefault(p, []).append(f"diagnose {f.severity} {code}: {f.title}")
        inline[p] = f"was {c.old_text}"
    data_notes = []
    for f in diag.findings:
        for key, note in f.notes.items():
            p = tuple(key.split("."))
            if note not in comments.get(p, []):
                comments.setdefault(p, []).append(note)
                data_notes.append(note)
    base_dir = src.resolve().parent
    if folder.resolve() != base_dir:  # manifests resolve against the config's folder: keep them pointing at the same files
        for name, d in ((raw.get("datasets") or {}).get("dataset_configs") or {}).items():
            if not isinstance(d, dict):
                continue
            for split in ("train", "val"):
                v = d.get(split)
                if isinstance(v, str) and not Path(v).expanduser().is_absolute():
                    d[split] = os.path.relpath(base_dir / v, folder.resolve())
                    comments.setdefault(("datasets", "dataset_configs", name, split), []).append(
                        f"path relative to this file (the original config, in {base_dir}, says {v})")
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = [f"# {target.name}: written by `stablesweep diagnose {src}` on {stamp}.",
              f"# The original ({src}) is unchanged. Every changed setting carries the finding behind it",
              "# (\"diagnose <severity> <code>: ...\") and its old value; the original's own comments are not kept."]
    if diag.overrides:
        header += _wrapped("Overrides applied before the diagnosis (and kept here): "
                           + " ".join(f"--set {o}" for o in diag.overrides))
    if data_notes:
        header.append("# DATA NOT FIXED: this file changes settings only. The data problems noted below at")
        header.append("# datasets.dataset_configs.* must be fixed in the manifests; until then the pre-flight check")
        header.append("# of `stablesweep train` refuses this config, as it should.")
    header += _wrapped(f"Changed: {', '.join(c.key for c in changes)}.")
    lines = list(header)
    _emit(raw, (), 0, lines, comments, inline)
    text = "\n".join(lines) + "\n"
    try:
        config_from_dict(yaml.safe_load(text), source=str(target), base_dir=str(folder.resolve()))
    except (ConfigError, yaml.YAMLError) as e:  # a bug of ours: never write a config that does not load
        raise RuntimeError(f"the fixed config does not load: {e}\n{text}") from e
    return target, text, changes


def fixed_path(config: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where `<stem>_fixed.yaml` of `config` goes: `out_dir`, or beside the config."""
    config = Path(config)
    return (Path(out_dir) if out_dir is not None else config.parent) / f"{config.stem}_fixed.yaml"


def check_fixed_target(config: str | Path, out_dir: str | Path | None, force: bool) -> None:
    """Before any work: refuse an --out that cannot be written, and an existing `<stem>_fixed.yaml`
    (the user may have edited it) unless `force`."""
    target = fixed_path(config, out_dir)
    check_output_dir(target.parent, "--out" if out_dir is not None else "the config's folder")
    if target.exists() and not force:
        raise InputError(f"{target} exists (you may have edited it); pass --force to overwrite it, "
                         "--out DIR to write elsewhere, or --no-write")


def write_fixed(diag: Diagnosis, out_dir: str | Path | None = None) -> tuple[Path, list[Change]] | None:
    """Write `<stem>_fixed.yaml` (atomically); never over the config itself."""
    made = fixed_config(diag, out_dir)
    if made is None:
        return None
    target, text, changes = made
    if target.resolve() == diag.config_path.resolve():
        raise InputError(f"refusing to overwrite the config {diag.config_path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target, changes
