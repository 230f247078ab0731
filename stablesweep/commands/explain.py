"""`stablesweep explain RUN_DIR_OR_MLFLOW_RUN`: replay a diverged run's last steps under controlled
changes and name the cause."""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

EPILOG = """\
examples:
  stablesweep train configs/demo.yaml --set training.lr=3 --set training.max_grad_norm=null --out runs/hot
  stablesweep explain runs/hot
  stablesweep explain runs/hot --lr-factor 0.01 --device cuda
  stablesweep explain 3f2a...e9 --mlflow sqlite:///runs/mlflow.db            # a sweep's trial, by run id
  stablesweep explain runs:/3f2a...e9                                        # the same, as a runs:/ URI

From the run's last checkpoint at or before its first bad step (training.keep_checkpoints keeps a
ring of them; with none, from the run's initial state), the steps up to the bad step and
--extra-steps more are replayed as they were and under each change: masking slice, fp32, the lr
times --lr-factor, another data order. The cause is the first change (in that order) that removes
the divergence: masking, precision, learning rate or data (with the samples of the batch at the
first bad step); not reproduced when the replay as run does not diverge; undetermined when no
change removes it. A sweep's trial is given by its MLflow run id (or runs:/RUN_ID): its Tune
trial directory is found through the run's tags, and its checkpoints are the ring Tune kept
(training.keep_checkpoints, 3 by default); the trial directory must be on this machine. Writes
explain.json into the run or trial directory. Exit status: 0 a cause was found, 1 not reproduced
or undetermined, 2 bad input (a missing run directory, an unknown run id, a run that did not
diverge or kept no checkpoint).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="replay a diverged run under controlled changes and name the cause",
                       description="Say why a run diverged, by experiment: replay its last steps from a "
                                   "checkpoint as they were and under one change at a time.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR_OR_MLFLOW_RUN",
                   help="the --out directory of a `stablesweep train` run, or a sweep trial's MLflow run id "
                        "(or runs:/RUN_ID)")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="the MLflow store of a run id (default: sqlite:///runs/mlflow.db, the default "
                        "of `stablesweep sweep`)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="where to replay (default: cpu; the run's own device replays it most faithfully)")
    p.add_argument("--lr-factor", type=float, default=0.1, help="the lower lr's factor (default: 0.1)")
    p.add_argument("--extra-steps", type=int, default=10,
                   help="steps replayed past the first bad step (default: 10): a change that only delays "
                        "the divergence by fewer steps does not count as removing it")
    p.add_argument("--quiet", action="store_true", help="print only the explanation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stablesweep.diagnose.explain import CAUSES, explain
    from stablesweep.train import resolve_device

    resolve_device(args.device)
    log = None if args.quiet else (lambda s: print(s, flush=True))
    src = source(args.run, args.mlflow)
    expl = explain(src, device=args.device, lr_factor=args.lr_factor, extra_steps=args.extra_steps, log=log)
    out = src.out
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(expl.to_dict(), indent=2) + "\n")
    os.replace(tmp, out)
    print(expl.format())
    return 0 if expl.cause in CAUSES else 1


def source(run: str, uri: str | None):
    """A run directory, or an MLflow run (a run id or runs:/RUN_ID) in the store `uri`."""
    from stablesweep.commands.args import resolve_uri
    from stablesweep.diagnose.explain import ExplainError, read_run, read_trial

    m = re.fullmatch(r"runs:/([^/]+)(/.*)?", run)
    if Path(run).is_dir() or not (m or re.fullmatch(r"[0-9a-f]{32}", run)):
        if uri:
            raise ExplainError(f"--mlflow {uri}: {run} is not an MLflow run id (32 hex digits, or runs:/RUN_ID)")
        return read_run(run)
    return read_trial(resolve_uri(uri), m.group(1) if m else run)
