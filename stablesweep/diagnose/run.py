"""`diagnose(config)`: read the config and the region file, scan the data, run the checks, probe."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from stablesweep.config import config_from_dict

from .diagnosis import Diagnosis
from .raw import check_eval_ratio, read_raw
from .region_file import read_region


def diagnose(config_path: str | Path, overrides: list[str] | None = None, *, probe_steps: int = 0,
             region: str | Path | None = None, device: str = "auto",
             log: Callable[[str], None] | None = None) -> Diagnosis:
    """Diagnose a config file. Raises ConfigError (unreadable config) or InputError (unreadable
    region file): the CLI turns both into exit status 2. Reads files only."""
    path = Path(config_path)
    overrides = list(overrides or [])
    raw = read_raw(path, overrides)
    patched = copy.deepcopy(raw)
    findings = check_eval_ratio(patched, str(path))  # before validation, which refuses them
    cfg = config_from_dict(patched, source=str(path), base_dir=str(path.resolve().parent))
    measured = read_region(region) if region is not None else None  # bad file: exit 2 before any work
    # torch and torchvision only once the input reads
    from stablesweep.data.cache import cache_lookup
    from stablesweep.data.manifests import scan

    from .checks import CHECKS, Context

    report, sources = scan(cfg, cfg.data.verify_images, cache_lookup(cfg))
    ctx = Context(cfg, path, report, measured)
    for check in CHECKS:
        findings += check(ctx)
    diag = Diagnosis(path, cfg, raw, findings, overrides)
    if probe_steps > 0:
        from .probe import run_probe

        diag.probe = run_probe(cfg, probe_steps, report, sources, device=device, log=log)
        findings += diag.probe.findings
    return diag
