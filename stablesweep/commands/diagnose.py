"""`stablesweep diagnose`: findings (severity, evidence, fix) and `<config>_fixed.yaml`."""
from __future__ import annotations

import argparse
from pathlib import Path

from stablesweep.commands.args import add_set_argument

EPILOG = """\
examples:
  stablesweep diagnose configs/food_multi.yaml
  stablesweep diagnose my.yaml --probe-steps 20            # also train 20 steps, bad labels kept
  stablesweep diagnose my.yaml --region runs/ramp/ramp.json  # lr against the measured boundary
  stablesweep diagnose my.yaml --out fixed/ --set training.precision=fp16

Checks every label of every manifest (file and line; 1-based labels recognised), masking against
precision and loss (-inf masking, -1e9 in fp16, label smoothing over masked logits, masks applied
before the fp32 upcast), gradient clipping, eval_ratio, skip_evaluation, missing files, and the lr
against a sweep's stable_region.json or a ramp's ramp.json.

Writes <config stem>_fixed.yaml beside the config (or in --out) with every changed setting
commented with the finding behind it. Data errors are not "fixed" by the config: the finding names
the manifest and lines to fix. The config and data files are never modified.
Exit status: 0 healthy (no error or warning), 1 findings, 2 input unreadable.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="find what makes a config unstable, write <config>_fixed.yaml",
                       description="Diagnose a training config and its data: findings with severity, evidence "
                                   "and fix; optionally a short probe run; a fixed config.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config YAML")
    p.add_argument("--probe-steps", type=int, default=0, metavar="N",
                   help="train N steps of the real model on the real data (out-of-range labels kept) and "
                        "locate the first non-finite module, step, dataset and loss term (default 0: no probe)")
    p.add_argument("--region", default=None, metavar="FILE",
                   help="a sweep's stable_region.json or a ramp's ramp.json: check the lr against it")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write <config stem>_fixed.yaml here (default: beside the config)")
    p.add_argument("--no-write", action="store_true", help="print the findings only; write nothing")
    p.add_argument("--force", action="store_true", help="overwrite an existing <config stem>_fixed.yaml")
    add_set_argument(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the probe runs (default: auto = cuda when there is one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stablesweep.config import ConfigError
    from stablesweep.diagnose import (
        diagnose,
        format_changes,
        format_diagnosis,
        write_fixed,
    )

    if args.probe_steps < 0:
        raise ConfigError(f"--probe-steps: must be 0 or more, got {args.probe_steps}")
    if not args.no_write:
        from stablesweep.diagnose.fixed import check_fixed_target

        check_fixed_target(args.config, args.out, args.force)
    if args.probe_steps:
        from stablesweep.train import resolve_device

        resolve_device(args.device)  # a GPU asked for where there is none: error before any work
    log = (lambda s: print(s, flush=True))
    diag = diagnose(args.config, args.overrides, probe_steps=args.probe_steps, region=args.region,
                    device=args.device, log=log)
    print(format_diagnosis(diag))
    if args.no_write:
        return diag.exit_code
    written = write_fixed(diag, Path(args.out) if args.out else None)
    if written is None:
        if not diag.healthy:
            print("no setting to change: the findings above are in the data or need your decision; "
                  "no _fixed.yaml written")
    else:
        print(format_changes(*written))
    return diag.exit_code
