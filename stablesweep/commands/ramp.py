"""`stablesweep ramp`: the largest stable lr of each setting, by a progressive ramp."""
from __future__ import annotations

import argparse
import sys
import time

from stablesweep.commands.args import add_budget_arguments, add_cluster_arguments, resume_command
from stablesweep.vocab import SAFETY

EPILOG = """\
examples:
  # the demo config: one setting, lr from 1e-3 up the 1-2-5 ladder, then bisection to 1.25x
  stablesweep ramp configs/demo.yaml --lr-start 1e-3 --lr-stop 30 --steps 30

  # every precision x masking x clip of a space, 4 probes a setting at once, on the GPUs of this machine
  stablesweep ramp my.yaml --space search_spaces/default.yaml --parallel 4 --gpus-per-trial 0.25

  # on a multi-node Ray cluster (docs/cluster.md): --out must be storage every node shares
  stablesweep ramp my.yaml --space search_spaces/default.yaml --parallel 4 --gpus-per-trial 0.25 \\
      --address auto --out /mnt/shared/ramps --shared-storage        # or --out s3://bucket/ramps --local-dir DIR

  # the user's way: raise lr step by step, each rung continuing from the last stable one
  stablesweep ramp my.yaml --mode continue --ladder 1-2-5 --lr-start 1e-6 --lr-stop 1e-4

  # let an lr range test (exponential lr, stopped at 4x the best smoothed loss) propose the bracket
  stablesweep ramp my.yaml --first-pass range-test

  # continue a stopped ramp (Ctrl-C, SIGTERM, a killed driver): the same command, plus --resume
  stablesweep ramp my.yaml --mode continue --name food-ramp --resume

The budget: probes start at --steps and the answer is for --target-steps (default: the config's
own length). When the target is longer, each setting's bracket is refitted at x4 the budget, rung
by rung up to the target: only its max stable and min failed lrs (with --replicates, the lrs
around the 5%-risk point) are promoted, continuing from the probe's checkpoint where the lr is
constant, and a stall below the target counts as "not trained yet" unless it persists at the next
rung. The recommended config (training.steps the target) then runs at the target with --confirm
seeds. ramp_budgets.png draws each setting's bracket (and 5%-risk lr) against the budget; ramp.json,
ramp.md and the terminal say what the rungs and the confirmation cost (FLOPs, seconds) next to one
full run at the target.

How it works: the space's categorical axes (precision, masking, clip, loss type...) give the
settings; for each, lr climbs the ladder K rungs at a time (K = --parallel) until a rung
diverges, then the bracket [last stable, first diverged] is bisected in log space until its ratio
is at most --resolution. The climb gallops by default (rungs 1, 2, 4, 8, 16... of the ladder and
its top: six decades in about six probes, as stable probes are the costly ones); in continue mode,
or with --climb step, it tries every rung. Each probe is a real short training run (--steps)
judged by the same monitor as `train` and `sweep`: verdicts hold for that budget. A probe that
stalls (finite, but its loss fell less than monitor.min_progress) is no rung to climb from: below
the stable band the lr is too small, above it the stall ends the bracket as a divergence does.
Settings that never diverge up to --lr-stop, diverge already at --lr-start, or never train, are
reported as such.

With --replicates K, each bracketed setting then runs K seeds at the lrs inside its bracket and at
its ends, P(fails | lr) is fitted per setting, K more seeds run at the lr at 5% risk so fitted, the
fit is made again, and ramp.json/md give the lr at 5% risk with an interval, the lr at 50%, the
evidence and the replicates' FLOPs next to the ramp's;
the recommended lr is at most --safety x the 5%-risk lr. With K=1 the output says the boundary is
a single-seed estimate.

Writes OUT/NAME/ramp.json, ramp.md, ramp.png and recommended/<setting>.yaml (lr = max stable x
--safety), and Tune's experiment of the probes in OUT/NAME/tune (the whole ramp is one Tune run);
logs a parent MLflow run with one child run a probe (runs/mlflow.db with the default --out, the
store sweeps write too, else OUT/mlflow.db; unless --mlflow). With a URI --out, only Tune's
experiment goes there (OUT/NAME/tune); the rest to LOCAL_DIR.

A stopped ramp (Ctrl-C, SIGTERM, a killed driver, a full or read-only --out) continues with the same command plus --resume:
the probes that ended are kept, those that were running go on from their checkpoints.

On a cluster of more than one node a plain local --out is refused (as for `sweep`): probes write
their checkpoints there from the worker nodes, and continue mode warm-starts each rung from the
last stable rung's checkpoint, which may lie on another node. A probe whose node is lost is
retried from its last checkpoint (--max-failures, 2 by default there).
Exit status: 0 done, 1 no setting has a stable lr, 2 bad input, 74 the output could not be
written (disk full, read-only; continue with --resume), 130 interrupted (continue with --resume), 143 terminated by SIGTERM (handled as Ctrl-C; continue with --resume).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ramp", help="find the largest stable lr of each setting with a progressive ramp",
                       description="Progressive learning-rate ramp: climb a ladder of lrs until training "
                                   "diverges, then bisect the boundary, per setting.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config YAML (needs training.steps, or pass --steps)")
    p.add_argument("--space", default=None, help="search space YAML: its categorical axes give the settings "
                                                 "(default: the config as it is, one setting)")
    p.add_argument("--lr-start", type=float, default=1e-6, help="first rung (default 1e-6)")
    p.add_argument("--lr-stop", type=float, default=1.0, help="last rung (default 1.0)")
    p.add_argument("--ladder", choices=["1-2-5", "x2", "x10"], default="1-2-5",
                   help="rungs: 1, 2, 5 a decade (default), doubling, or decades")
    p.add_argument("--climb", choices=["gallop", "step"], default=None,
                   help="gallop: rungs 1, 2, 4, 8... of the ladder, strides doubling (default in restart mode); "
                        "step: every rung (default in continue mode)")
    p.add_argument("--resolution", type=float, default=1.25,
                   help="stop bisecting when min diverged / max stable <= this (default 1.25)")
    p.add_argument("--parallel", type=int, default=2, metavar="K", help="probes a setting at once (default 2)")
    p.add_argument("--safety", type=float, default=SAFETY,
                   help=f"recommended lr = this x the smallest diverged lr, at most the largest stable lr "
                        f"(this x the largest stable lr when none diverged; default {SAFETY})")
    p.add_argument("--steps", type=int, default=None, metavar="S",
                   help="step budget of the first probes (default: training.steps of the config, at most the target)")
    p.add_argument("--target-steps", type=int, default=None, metavar="N",
                   help="the budget the answer is for: the run you will do (default: the config's own, training.steps, "
                        "or epochs x steps an epoch). Below it, the lrs near each bracket are promoted to x4 the "
                        "budget, rung by rung, up to N")
    add_budget_arguments(p, "probe the ramp", "the recommended config", "--steps")
    p.add_argument("--mode", choices=["restart", "continue"], default="restart",
                   help="restart: every probe from scratch (default); continue: each rung warm-starts from the "
                        "last stable rung's checkpoint and trains S more steps")
    p.add_argument("--first-pass", choices=["range-test"], default=None,
                   help="one lr range test per setting proposes the bracket, which probes then verify")
    p.add_argument("--range-steps", type=int, default=None, help="steps of the range test (default: --steps)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C", help="CPUs a probe (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                   help="GPUs a probe; fractions pack probes on a card (default 0: CPU); with --workers-per-trial, "
                        "GPUs a worker (a whole number)")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N", help="probes at once in all")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join (ray.init address, e.g. auto or HOST:6379); default: a local Ray")
    p.add_argument("--out", default="runs/ramps", metavar="DIR",
                   help="ramps live in DIR/NAME (default runs/ramps; its MLflow store is runs/mlflow.db, shared with "
                        "sweeps, else DIR/mlflow.db). On a multi-node cluster DIR must be shared "
                        "storage: a path the same on every node with --shared-storage, or a bucket URI")
    add_cluster_arguments(p, "ramp", "probe", "runs/ramps", "DIR/NAME/{ramp.json, ramp.md, ramp.png, recommended/}")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="MLflow tracking URI (default sqlite:///runs/mlflow.db for the default --out, else "
                        "sqlite:///DIR/mlflow.db)")
    p.add_argument("--name", default=None, help="ramp name (default: CONFIG-ramp-TIMESTAMP)")
    p.add_argument("--evaluate", action="store_true", help="also evaluate each probe at its end (slower)")
    p.add_argument("--replicates", type=int, default=0, metavar="K",
                   help="after bracketing, run K seeds (training.seed + 0..K-1) at the lrs inside each bracket "
                        "and at its ends, fit P(fails | lr) per setting, run K more at the lr at 5%% risk so "
                        "fitted and fit again, and recommend from that lr (writes ramp_boundary.png; default 0: "
                        "none)")
    p.add_argument("--samples", type=int, default=None, metavar="K",
                   help="once bracketed, train K lrs from scratch between the smallest stable lr and the largest "
                        "safe lr (--safety x the edge), so the recommendation is the best-training safe lr, not "
                        "the edge's margin (default 3, rounded up to whole batches of --parallel so no probe "
                        "slot idles: 4 with --parallel 2; 0: choose among the climb's probes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the ramp --name in --out (default: the newest one there) where it stopped: "
                        "probes that ended are kept, those that were running go on from their checkpoints")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stablesweep.sweep.faults import OutputFault  # light: a refusal imports no Ray
    from stablesweep.sweep.options import RampOptions
    from stablesweep.sweep.ramp_runner import run_ramp

    opts, started = RampOptions.from_args(args), time.time()
    try:
        result = run_ramp(opts, echo=lambda s: print(s, flush=True))
    except OutputFault as e:
        print(f"\nerror: {e}\ncontinue with  {resume_command(sys.argv, e.name, 'ramp')}", file=sys.stderr)
        return 74
    except KeyboardInterrupt:  # outside Tune's run of the probes (it takes a Ctrl-C itself): while Ray
        from stablesweep.signals import stop_status, stop_word  # started or shut down, the store was made

        name = _recorded_since(opts, started)
        if name:
            print(f"\n{stop_word()}: continue with  {resume_command(sys.argv, name, 'ramp')}", file=sys.stderr)
        else:
            print(f"\n{stop_word()} before the ramp was recorded: nothing ran, nothing to resume; "
                  "run the same command again", file=sys.stderr)
        return stop_status()
    if result.interrupted:
        from stablesweep.signals import stop_status, stop_word

        print(f"\n{stop_word()}: continue with  {resume_command(sys.argv, result.name, 'ramp')}", file=sys.stderr)
        return stop_status()
    return 0 if any(x["max_stable_lr"] for x in result.summary) else 1


def _recorded_since(opts, started: float) -> str | None:
    """The name of the ramp this command runs, once its state (what --resume needs) is written: --name's,
    else the newest ramp in --out if this command wrote it."""
    from stablesweep.sweep.ramp_runner import STATE_FILE, ramp_paths, resume_name
    from stablesweep.vocab import InputError

    try:
        name = resume_name(opts)
        state = ramp_paths(opts, name)[1] / STATE_FILE
        return name if state.is_file() and (opts.name or opts.resume or state.stat().st_mtime >= started) else None
    except (InputError, OSError):
        return None
