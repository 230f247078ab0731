"""`stablesweep sweep`: a stability sweep with Ray Tune + Optuna; the stable region in MLflow."""
from __future__ import annotations

import argparse
import sys

from stablesweep.commands.args import add_budget_arguments, add_cluster_arguments, resume_command
from stablesweep.vocab import ERROR, REASON, VERDICT

EPILOG = """\
examples:
  # the CPU demo: 16 trials, both stable and diverged ones, a few minutes on two cores
  stablesweep sweep configs/demo.yaml --space search_spaces/quick.yaml --samples 16

  # map the region evenly (QMC), four trials per GPU of this machine
  stablesweep sweep my.yaml --space search_spaces/default.yaml --sampler qmc --samples 128 \\
      --gpus-per-trial 0.25 --out runs/sweeps --name food-qmc

  # every combination of grid/choice values, a short budget
  stablesweep sweep my.yaml --space my_grid.yaml --sampler grid --steps 200

  # the boundary as a probability: 3 seeds around each combination's bracket, P(fails | lr) fitted
  stablesweep sweep my.yaml --space my_grid.yaml --sampler grid --steps 200 --replicates 3

  # trials of 30 steps, the answer for the 480-step run: the lrs near each bracket promoted x4 a rung
  # (120, 480 steps), the recommended lr run at 480 steps with 2 fresh seeds ("confirmed: 2/2 trained")
  stablesweep sweep my.yaml --space my_grid.yaml --sampler grid --steps 30 --target-steps 480

  # continue an interrupted sweep (no trial lost, none run twice; the sampler keeps what it learnt)
  stablesweep sweep my.yaml --space search_spaces/default.yaml --out runs/sweeps --name food-qmc --resume

  # on a multi-node Ray cluster (docs/cluster.md): --out must be storage every node shares
  stablesweep sweep my.yaml --space search_spaces/default.yaml --gpus-per-trial 0.25 \\
      --address auto --out /mnt/shared/sweeps --shared-storage        # an NFS path, the same on every node
  stablesweep sweep my.yaml --space search_spaces/default.yaml --gpus-per-trial 0.25 \\
      --address auto --out s3://my-bucket/sweeps --local-dir ~/sweeps  # a bucket: Tune's checkpoints there,
                                                                       # the region, optuna.db, mlflow.db here

The budget: every verdict of a trial holds for its --steps. With --target-steps N longer than that,
the answer is for N steps: the rungs (the ramp's, in OUT/NAME/rungs; their probes are rows of
trials.csv with their phase and budget_steps, and MLflow children) refit each combination's bracket at
x4 the budget up to N, a stall below N counting as "not trained yet" unless it persists at the next
rung; the recommended config (training.steps N) runs at N with --confirm seeds. stable_region.md/json,
recommended.yaml's header, the terminal and the MLflow parent run then say what the answer holds for
("confirmed: 2/2 trained at 480 steps", "not confirmed", "extrapolated from M steps") and what the rungs
and the confirmation cost next to one full run at N; figures/budgets.png draws each bracket against the
budget.

A search space is YAML whose keys are dotted config keys:
  training.lr: {loguniform: [1.0e-6, 1.0e-1]}
  training.max_grad_norm: {choice: [null, 0.5, 1.0, 5.0]}
  loss.masking: {choice: [none, neg_inf, large_negative, finfo_min, slice]}
  training.precision: {choice: [fp32, bf16, fp16]}
(also {uniform: [lo, hi]}, {int: [lo, hi]}, {grid: [...]}). It is checked against the config before
Ray starts.

Every trial ends with one verdict: stable (ran its budget), diverged (non-finite loss or gradient,
or a loss explosion; stopped at the report where it was seen), pruned (stopped by ASHA for poor
but finite progress), error (crashed). Files in OUT/NAME: trials.csv, stable_region.json/.md,
figures/, recommended.yaml (the best stable setting, lr at most half the smallest diverged lr of
its combination, or of its lr at 5% risk with --replicates), optuna.db, and Tune's experiment
(the replicates' in OUT/NAME/replicates; figures/boundary.png draws P(fails | lr)). MLflow: runs/mlflow.db
with the default --out (ramps write there too, so `stablesweep compare` sees both), else OUT/mlflow.db,
unless --mlflow. With a URI --out, only Tune's experiment goes to OUT/NAME; the rest to LOCAL_DIR.

On a cluster of more than one node (alive nodes, plus those an autoscaler may add) a plain local
--out is refused: each node would write its trials' checkpoints to its own disk, so a trial could
not be restored on another node. A trial whose node is lost is retried from its last checkpoint
(--max-failures, 2 by default there) and still ends with exactly one verdict.
Exit status: 0 done, 1 no trial ended stable or some trial ended in error, 2 bad input, 74 the
output could not be written (disk full, read-only; continue with --resume), 130 interrupted
(continue with --resume), 143 terminated by SIGTERM (handled as Ctrl-C; continue with --resume).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="sweep lr, clipping, masking, precision with Ray Tune + Optuna; "
                                     "find the stable region",
                       description="Run a stability sweep: one guarded training run per trial, diverged trials "
                                   "stopped at once, the stable region (per combination of categorical axes: "
                                   "largest stable lr, smallest diverged lr, best setting, LR sensitivity) written "
                                   "to files and logged to MLflow.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="base training config YAML (every trial starts from it)")
    p.add_argument("--space", required=True, metavar="SPACE", help="search space YAML (see below)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="number of trials (default: 16; with --sampler grid, the grid size)")
    p.add_argument("--sampler", choices=["tpe", "qmc", "random", "grid"], default=None,
                   help="tpe (default) hunts the best stable setting; qmc fills the space evenly to map the "
                        "region; random; grid runs every combination of grid/choice values")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C", help="CPUs a trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                   help="GPUs a trial; fractions pack trials on a card (0.25: four a GPU). Default 0 (CPU). With "
                        "--workers-per-trial, GPUs a worker (a whole number)")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="K",
                   help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join (ray.init address, e.g. auto or HOST:6379); default: a local Ray")
    p.add_argument("--out", default="runs/sweeps", metavar="DIR",
                   help="sweeps live in DIR/NAME (default runs/sweeps); the MLflow store is DIR/mlflow.db, or "
                        "runs/mlflow.db, shared with ramps, for the default DIR. On a "
                        "multi-node cluster DIR must be shared storage: a path the same on every node (NFS) with "
                        "--shared-storage, or a bucket URI Tune understands (s3://, gs://, abfs://, ...)")
    add_cluster_arguments(p, "sweep", "trial", "runs/sweeps",
                          "DIR/NAME/{trials.csv, stable_region.*, recommended.yaml, optuna.db, sweep.json}")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="MLflow tracking URI (default sqlite:///runs/mlflow.db for the default --out, else "
                        "sqlite:///DIR/mlflow.db; a server: http://127.0.0.1:5000)")
    p.add_argument("--name", default=None, help="sweep name (default: CONFIG-SPACE-TIMESTAMP)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep --name in --out (default: the latest one there)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config key (repeatable): --set training.report_interval=10")
    p.add_argument("--steps", type=int, default=None, metavar="S",
                   help="step budget of every trial (sets training.steps); verdicts hold for this budget")
    p.add_argument("--no-asha", dest="asha", action="store_const", const=False, default=None,
                   help="do not prune poor trials with ASHA (on by default: at half the budget the worse "
                        "half of the finite trials stops)")
    p.add_argument("--asha-grace", type=int, default=None, metavar="REPORTS",
                   help="reports before ASHA may stop a trial (default: half the budget)")
    p.add_argument("--seed", type=int, default=None, help="the sampler's seed (default 0)")
    p.add_argument("--replicates", type=int, default=None, metavar="K",
                   help="with --sampler grid or qmc: once the trials end, run K seeds (training.seed + 0..K-1) at "
                        "three lrs from each combination's largest stable to its smallest failed lr, fit P(fails | "
                        "lr) per combination, run K more at the lr at 5%% risk so fitted, fit again and report "
                        "the lr at 5%% risk (with an interval), the "
                        "lr at 50%% and the evidence; the recommended lr is then at most half the 5%%-risk lr. "
                        "Without it each bracket is a single-seed estimate")
    p.add_argument("--target-steps", type=int, default=None, metavar="N",
                   help="the budget the answer is for: the run you will do (default: the trials' own, --steps or "
                        "training.steps, and the sweep is as it was). Longer than the trials: once they (and their "
                        "replicates) end, the lrs around each combination's bracket are promoted to x4 the budget, "
                        "rung by rung up to N, as `stablesweep ramp` does (climbed and bisected at each rung), and "
                        "the recommended config is the one for N steps")
    add_budget_arguments(p, "probe the rungs", "each combination's recommended lr", "the trials")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stablesweep.config import load_config
    from stablesweep.sweep.options import SweepOptions
    from stablesweep.sweep.plan import plan_sweep
    from stablesweep.sweep.space import load_space

    opts = SweepOptions.from_args(args)
    # the cheap checks first, before Ray is even imported; then every check of the plan (the data's
    # with torch), before Ray, MLflow and Optuna are
    load_space(opts.space).validate(load_config(opts.config, opts.config_overrides()))
    plan = plan_sweep(opts)

    from stablesweep.sweep.recovery import OutputFault
    from stablesweep.sweep.runner import run_sweep
    from stablesweep.tracking import stable_trials_link, ui_command

    try:
        res = run_sweep(opts, echo=lambda s: print(s, flush=True), plan=plan)
    except OutputFault as e:
        print(f"\nerror: {e}\ncontinue with  {resume_command(sys.argv, e.name, 'sweep')}", file=sys.stderr)
        return 74
    except KeyboardInterrupt:  # before Tune ran the trials (it takes a Ctrl-C itself while they run), or after
        from stablesweep.signals import stop_status, stop_word
        from stablesweep.sweep.plan import STATE_FILE

        if (plan.sweep_dir / STATE_FILE).exists():
            print(f"\n{stop_word()}: continue with  {resume_command(sys.argv, plan.name, 'sweep')}", file=sys.stderr)
        else:
            print(f"\n{stop_word()} before the sweep was recorded: nothing ran, nothing to resume; "
                  "run the same command again", file=sys.stderr)
        return stop_status()
    c = res.counts
    print()
    print(f"sweep {res.name}: {sum(c.values())} trials in {res.wall_s:.0f}s: stable {c.get('stable', 0)}, "
          f"stalled {c.get('stalled', 0)}, diverged {c.get('diverged', 0)}, pruned {c.get('pruned', 0)}, "
          f"error {c.get('error', 0)}" + (f", unfinished {c['unfinished']}" if c.get("unfinished") else "")
          + (f" ({sum(g.replicates for g in res.region.groups)} of them replicates)" if res.region.replicates else "")
          + (f" ({len(res.target.table)} of them probes of the rungs)" if res.target is not None else ""))
    print(f"budget: {res.region.budget_steps} steps a trial (every verdict holds for this budget"
          + (f"; the answer for {res.target.budgets.target} steps below)" if res.target is not None else ")"))
    print()
    print(res.region.to_text())
    if res.region.boundary_text():
        print("\n" + res.region.boundary_text())
    if res.region.importance:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(res.region.importance.items())[:4])
        print(f"\nwhat drives divergence ({res.region.importance_method}): {top}")
    if c.get("pruned"):
        print(f"\n{c['pruned']} trial(s) pruned by ASHA: stable only up to where they stopped, so not counted as "
              "stable; --no-asha maps the boundary with full-budget runs")
    if res.target is not None:
        print("\n" + "\n".join(res.target.lines()))
    if res.region.recommended:
        from stablesweep.vocab import format_value

        print("\nrecommended: " + "  ".join(f"{k}={format_value(v) if v is not None else 'null'}"
                                            for k, v in res.region.recommended.items()))
    print(f"\nfiles in {res.sweep_dir}:")
    for key in ("md", "json", "trials", "recommended", "figure_region", "figure_objective", "figure_boundary",
                "figure_budgets"):
        if key in res.files:
            print(f"  {res.files[key]}")
    for key in sorted(k for k in res.files if k.startswith("recommended/")):  # each setting's, runnable anywhere
        print(f"  {res.files[key]}")
    print(f"\nMLflow: parent run {res.parent_run_id} in {res.tracking_uri}")
    print(f"  {ui_command(res.tracking_uri)}")
    link = stable_trials_link(res.tracking_uri, res.parent_run_id, params=list(res.table.columns.intersection(
        [c for c in res.table.columns if "." in c])))
    if link:
        print(f"  the stable trials, best first: {link}")
    if res.target is not None and res.target.cost:
        print("\n" + res.target.cost_line())  # what the answer for the target cost
    if res.interrupted:
        from stablesweep.signals import stop_status, stop_word

        print(f"\n{stop_word()}: continue with  {resume_command(sys.argv, res.name, 'sweep')}", file=sys.stderr)
        return stop_status()
    if c.get("error"):
        errors = res.table[res.table[VERDICT] == ERROR]
        print(f"\n{c['error']} trial(s) ended in error (their settings are not in the region):",
              file=sys.stderr)
        for _, r in errors.head(5).iterrows():
            print(f"  trial {r['trial_id']} {r['name']}: {str(r[REASON] or 'error')[:300]}", file=sys.stderr)
        return 1
    return 0 if c.get("stable", 0) else 1
