"""`stablesweep explain RUN_DIR`: replay a diverged run's last steps under controlled changes and
name the cause."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

EPILOG = """\
examples:
  stablesweep train configs/demo.yaml --set training.lr=3 --set training.max_grad_norm=null --out runs/hot
  stablesweep explain runs/hot
  stablesweep explain runs/hot --lr-factor 0.01 --device cuda

From the run's last checkpoint at or before its first bad step (training.keep_checkpoints keeps a
ring of them; with none, from the run's initial state), the steps up to the bad step and
--extra-steps more are replayed as they were and under each change: masking slice, fp32, the lr
times --lr-factor, another data order. The cause is the first change (in that order) that removes
the divergence: masking, precision, learning rate or data (with the samples of the batch at the
first bad step); not reproduced when the replay as run does not diverge; undetermined when no
change removes it. Writes RUN_DIR/explain.json. Exit status: 0 a cause was found, 1 not
reproduced or undetermined, 2 bad input (a missing run directory, a run that did not diverge).
MLflow run ids are not read yet: give the run's --out directory.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="replay a diverged run under controlled changes and name the cause",
                       description="Say why a run diverged, by experiment: replay its last steps from a "
                                   "checkpoint as they were and under one change at a time.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a `stablesweep train` run")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="where to replay (default: cpu; the run's own device replays it most faithfully)")
    p.add_argument("--lr-factor", type=float, default=0.1, help="the lower lr's factor (default: 0.1)")
    p.add_argument("--extra-steps", type=int, default=10,
                   help="steps replayed past the first bad step (default: 10): a change that only delays "
                        "the divergence by fewer steps does not count as removing it")
    p.add_argument("--quiet", action="store_true", help="print only the explanation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stablesweep.explain import CAUSES, explain
    from stablesweep.train import resolve_device

    resolve_device(args.device)
    log = None if args.quiet else (lambda s: print(s, flush=True))
    expl = explain(args.run_dir, device=args.device, lr_factor=args.lr_factor, extra_steps=args.extra_steps, log=log)
    out = Path(args.run_dir) / "explain.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(expl.to_dict(), indent=2) + "\n")
    os.replace(tmp, out)
    print(expl.format())
    return 0 if expl.cause in CAUSES else 1
