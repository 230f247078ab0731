"""`stablesweep train`: one guarded run, progress per report interval, a verdict at the end."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stablesweep.commands.args import add_set_argument

EPILOG = """\
examples:
  stablesweep train configs/demo.yaml
  stablesweep train configs/demo.yaml --set training.lr=1e3          # watch it diverge
  stablesweep train my.yaml --set training.lr=2e-6 --set loss.masking=slice --device cuda --out runs/a
  stablesweep train my.yaml --out runs/a --resume runs/a/checkpoints/checkpoint_00000200

Writes OUT/result.json (verdict, reason, first_bad_step, steps, train_flops, per-dataset eval loss
and accuracy), OUT/config.yaml (the config as run, overrides applied) and the last checkpoint in
OUT/checkpoints/. Exit status: 0 stable (finite and trained), 1 diverged, 2 bad input (config,
data or device), 3 stalled (finite, but the smoothed loss fell less than monitor.min_progress of
the initial loss: the lr is too small, or at the edge of stability).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one guarded training run and print its verdict",
                       description="Train the multi-dataset model once with the guarded loss. Progress is "
                                   "printed every training.report_interval steps; the run ends stable "
                                   "(finite and trained), stalled (finite, did not train) or diverged "
                                   "(with the reason and the step where it began).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config YAML")
    add_set_argument(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train (default: auto = cuda when there is one)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write result.json, config.yaml and checkpoints here (default: runs/<config name>, or "
                        "runs/<config name>-2, -3, ... when it holds an earlier run: never overwritten)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT_DIR",
                   help="continue exactly from a checkpoint written by an earlier run")
    p.add_argument("--force", action="store_true",
                   help="reuse an --out (without --out: runs/<config name>) that holds an earlier run: its "
                        "result.json and checkpoints are removed first")
    p.add_argument("--quiet", action="store_true", help="print only the verdict")
    p.set_defaults(func=run)


def default_out(config: str | Path, *, force: bool = False, resuming: bool = False) -> Path:
    """runs/<config stem>, or the first of runs/<config stem>-2, -3, ... that holds no earlier run:
    a default --out never overwrites. With --force (replace it) or --resume (continue it), runs/<config stem>."""
    base = Path("runs") / Path(config).stem
    if force or resuming:
        return base
    out, n = base, 1
    while _earlier_run(out):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _earlier_run(out: Path) -> list[Path]:
    return [p for p in (out / "result.json", out / "checkpoints") if p.exists()]


def prepare_out(out: Path, *, explicit: bool, force: bool, resuming: bool) -> None:
    """Before training: refuse an --out that cannot be written; an --out that holds an earlier run
    is refused unless --force (or --resume, which continues it); with --force the earlier run's
    result.json and checkpoints are removed first, so none of them is mistaken for this run's."""
    import shutil

    from stablesweep.config import check_output_dir
    from stablesweep.vocab import InputError

    check_output_dir(out, "--out" if explicit else "the default --out")
    earlier = _earlier_run(out)
    if not earlier or resuming:
        return
    if not force:
        raise InputError(f"--out {out}: holds an earlier run ({', '.join(p.name for p in earlier)}); pass --force "
                         "to replace it, --resume CHECKPOINT to continue it, or another --out")
    for p in earlier:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def machine_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it, else the machine's)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def train_threads() -> int:
    """torch's threads for `train`: an OMP_NUM_THREADS the user exported (a positive whole number),
    else every CPU this process may run on."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else machine_cpus()


def precision_warning(device_type: str, precision: str) -> str | None:
    """The warning for a precision that CPUs only emulate (bf16 on most, fp16 on all): many times slower."""
    if device_type != "cpu" or precision not in ("fp16", "bf16"):
        return None
    return (f"warning: training.precision {precision} on CPU is emulated and runs many times slower than fp32 "
            f"(the first report may take minutes); use fp32 on CPU, {precision} on a GPU")


def run(args: argparse.Namespace) -> int:
    from stablesweep.config import load_config

    cfg = load_config(args.config, args.overrides)  # bad config: an error before torch is even imported
    resuming = args.resume is not None
    out = Path(args.out) if args.out else default_out(args.config, force=args.force, resuming=resuming)
    prepare_out(out, explicit=args.out is not None, force=args.force, resuming=resuming)
    import torch

    from stablesweep.train import resolve_device, run_training

    torch.set_num_threads(train_threads())  # the header line says how many
    device = resolve_device(args.device)  # a GPU asked for where there is none: error before any work
    warning = precision_warning(device.type, cfg.training.precision)
    if warning:
        print(warning, file=sys.stderr)
    log = None if args.quiet else (lambda s: print(s, flush=True))
    result = run_training(cfg, device=args.device, checkpoint_dir=out / "checkpoints",
                          resume_from=args.resume, log=log)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if result.verdict == "stable":
        accs = [d["accuracy"] for d in result.datasets.values()]
        acc = f", mean eval accuracy {100 * sum(accs) / len(accs):.1f}%" if accs else ""
        print(f"verdict: stable for {result.steps} steps (objective {result.objective:.4f}{acc})")
    elif result.verdict == "stalled":
        print(f"verdict: stalled after {result.steps} steps: the smoothed loss fell {100 * result.progress:.1f}% "
              f"from {result.initial_loss:.4g} to {result.final_loss:.4g}, less than monitor.min_progress "
              f"({100 * cfg.monitor.min_progress:.0f}%): finite, but not training")
    else:
        print(f"verdict: {result.verdict}: {result.reason} at step {result.first_bad_step} "
              f"(stopped after {result.steps} of {result.budget_steps} steps)")
    if result.dropped_samples:
        print(f"dropped: {result.dropped_samples} samples drawn with a label outside their dataset's range "
              "(loss.on_bad_label: skip); the warning above names the first")
    print(f"results: {out / 'result.json'}", file=sys.stderr)
    return {"stable": 0, "stalled": 3}.get(result.verdict, 1)
