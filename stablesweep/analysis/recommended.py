"""The one writer of a recommended config, for the sweep and the ramp.

A recommended config is the user's own YAML with only the changed keys (the setting's categorical
values, the recommended lr, any `--set` override): each is edited in the text of their file by key
path (the scalar after `lr:` in the `training:` block, or an entry of a one-line `{...}` mapping),
so their comments and layout stay; a key their file lacks is added under its block. Relative data
paths (a dataset's `train`/`val`, `data.cache`) are rewritten absolute, from the folder of the
user's file, so `stablesweep train RECOMMENDED` runs from any directory. The result is read back
and checked against the config it must say; where the edit cannot say it (a config built from a
dict, a layout the line edit does not know), the whole config is written instead.

The file is named by the setting's readable slug (`slice_clip=1.0.yaml`; `config.yaml` where the
sweep or ramp had one setting), and its header states the rule that set the lr and the evidence
(bracket, risk, budget) from the setting's `SettingAnswer`, the record its tables render.
"""
from __future__ import annotations

import copy
import datetime as _dt
import re
from pathlib import Path
from typing import Any

import yaml

from stablesweep.analysis.answer import SettingAnswer, evidence_lines, recommended_header, rule_line
from stablesweep.vocab import flatten, short_name

PATH_KEYS = ("train", "val")  # per dataset: paths that resolve against the config's folder


def setting_file_name(params: dict[str, Any]) -> str:
    """A setting's file name: `slice_clip=1.0.yaml`; `config.yaml` for the one setting of a config."""
    text = short_name(params).replace(" ", "_")
    return (re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text) or "config") + ".yaml"


def _absolute(raw: dict, base_dir: Path) -> None:
    """Rewrite the config's relative paths absolute, from `base_dir` (where they resolve now)."""
    def fix(p):
        return p if not isinstance(p, str) or Path(p).expanduser().is_absolute() else str((base_dir / p).resolve())

    for d in ((raw.get("datasets") or {}).get("dataset_configs") or {}).values():
        if isinstance(d, dict):
            for k in PATH_KEYS:
                if d.get(k) is not None:
                    d[k] = fix(d[k])
    data = raw.get("data") or {}
    if isinstance(data.get("cache"), str) and data["cache"] not in ("auto", "off"):
        data["cache"] = fix(data["cache"])


def _scalar(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("...") else text


_KEY = r"^(?P<ind>\s*)(?P<key>{k}|\"{k}\"|'{k}')\s*:(?P<rest>.*)$"


def _split_comment(rest: str) -> tuple[str, str]:
    m = re.search(r"\s+#", rest)
    if m and not rest.strip().startswith(("'", '"')):
        return rest[:m.start()], rest[m.start():]
    return rest, ""


def _find(lines: list[str], start: int, end: int, key: str, indent: int | None) -> int | None:
    rx = re.compile(_KEY.format(k=re.escape(key)))
    for i in range(start, end):
        m = rx.match(lines[i])
        if m and (indent is None or len(m["ind"]) == indent):
            return i
    return None


def _block_end(lines: list[str], i: int) -> tuple[int, int | None]:
    """(the end of the block under line i, its children's indent or None when it has none)."""
    ind = len(lines[i]) - len(lines[i].lstrip())
    child, j = None, i + 1
    while j < len(lines):
        t = lines[j]
        if t.strip() and not t.lstrip().startswith("#"):
            n = len(t) - len(t.lstrip())
            if n <= ind:
                break
            child = n if child is None else child
        j += 1
    return j, child


def edit_text(text: str, key: str, value: Any) -> str:
    """`text` (a YAML file) with the dotted `key` set to `value`, edited by line; raises ValueError
    where it cannot."""
    lines = text.split("\n")
    parts = key.split(".")
    start, end, indent, parent = 0, len(lines), 0, None
    for n, part in enumerate(parts):
        i = _find(lines, start, end, part, indent)
        if i is None:  # add the rest under the parent block (or at the end for a new top-level key)
            ind = " " * (indent or 0)
            new, step = [], 0
            for p in parts[n:-1]:
                new.append(f"{ind}{' ' * step}{p}:")
                step += 2
            new.append(f"{ind}{' ' * step}{parts[-1]}: {_scalar(value)}")
            at = end if parent is not None else len(lines)
            while parent is None and at > 0 and not lines[at - 1].strip():
                at -= 1
            lines[at:at] = new
            return "\n".join(lines)
        m = re.match(_KEY.format(k=re.escape(part)), lines[i])
        body, comment = _split_comment(m["rest"])
        if n == len(parts) - 1:
            lines[i] = f"{m['ind']}{m['key']}: {_scalar(value)}{comment}"
            return "\n".join(lines)
        if body.strip().startswith("{") and n == len(parts) - 2:  # a one-line flow mapping
            leaf = parts[-1]
            inner = body.strip()
            if not inner.endswith("}"):
                raise ValueError(f"{key}: a flow mapping over several lines")
            rx = re.compile(r"([{,]\s*)" + re.escape(leaf) + r"\s*:\s*[^,}]*")
            new_inner = (rx.sub(lambda mm: f"{mm[1]}{leaf}: {_scalar(value)}", inner, count=1) if rx.search(inner)
                         else inner[:-1].rstrip() + (", " if inner[1:-1].strip() else "") + f"{leaf}: {_scalar(value)}}}")
            lines[i] = f"{m['ind']}{m['key']}: {new_inner}{comment}"
            return "\n".join(lines)
        if body.strip():
            raise ValueError(f"{key}: {part} holds a value, not a block")
        parent = i
        end, child = _block_end(lines, i)
        start, indent = i + 1, child if child is not None else len(m["ind"]) + 2
    raise ValueError(key)


def recommended_text(target: dict, source: str | None) -> str:
    """The YAML of `target` (a complete raw config): the user's file `source` with only the keys
    that differ edited, or the whole config where that cannot say it."""
    from stablesweep.config import config_from_dict

    path = Path(source) if source else None
    if path is not None and path.is_file():
        text = path.read_text()
        try:
            user = yaml.safe_load(text) or {}
            mine = config_from_dict(user, base_dir=str(path.resolve().parent)).to_dict()
            have = flatten(mine)
            for k, v in flatten(target).items():
                if have.get(k, object()) != v:
                    text = edit_text(text, k, v)
            if config_from_dict(yaml.safe_load(text) or {}).to_dict() == target:
                return text if text.endswith("\n") else text + "\n"
        except Exception:  # noqa: BLE001 - any failure of the edit: the whole config below
            pass
    return yaml.safe_dump(target, sort_keys=False)


def write_recommended(path: Path, base: dict, changes: dict[str, Any], *, source: str | None,
                      base_dir: str | None, header: str) -> Path:
    """Write the recommended config at `path`: `base` (the run's raw config) with `changes` (dotted
    keys), relative paths made absolute from `base_dir`, as an edit of the user's file `source`,
    under `header` (`answer.recommended_header`). Refuses (ConfigError) what the config would."""
    from stablesweep.config import config_from_dict, set_dotted

    raw = copy.deepcopy(base)
    for k, v in changes.items():
        set_dotted(raw, k, v)
    if base_dir:
        _absolute(raw, Path(base_dir))
    target = config_from_dict(raw).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + recommended_text(target, source))
    return path


def write_recommended_set(items: list[tuple[SettingAnswer, dict[str, Any], str | None]], out: Path, base: dict, *,
                          tool: str, what: str, seeds: int = 0, source: str | None = None,
                          base_dir: str | None = None, top: str | None = None) -> dict[str, Path]:
    """The recommended configs of a sweep or a ramp (`tool`), one writer for both: per setting
    `out/recommended/<setting>.yaml` from each (answer, changed keys, a line on where it comes
    from); with `top` (a file name), the first item also as `out/top`. Each header states the rule
    that set the lr and the evidence, from the answer (`answer.rule_line`, `evidence_lines`).
    `what`: the runs in a phrase (`12 trials (stable 5, ...)`, `the ramp NAME`)."""
    files: dict[str, Path] = {}
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    todo = ([(top, *items[0])] if top and items else []) + [(None, *it) for it in items]
    for name, a, changes, line in todo:
        path = out / name if name else out / "recommended" / setting_file_name(a.params)
        lines = [f"{path.name}: written by `stablesweep {tool}` on {when}, from {what}",
                 *([line] if line else []), rule_line(a, seeds), *evidence_lines(a, seeds)]
        files["recommended" if name else f"recommended/{path.name}"] = write_recommended(
            path, base, changes, source=source, base_dir=base_dir, header=recommended_header(lines))
    return files
