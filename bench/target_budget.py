"""Does the ramp's answer hold for the run you will do? Issue 27's measurable promise, checked.

    python bench/target_budget.py [--out runs/bench/target_budget] [--seeds 20] [--procs 2] [--grid run]
                                  [--grid-seeds 4]

On configs/demo.yaml at constant lr (warmup 0), on CPU:
1. the README's command, as a user runs it (a subprocess with its own --out):
   `stablesweep ramp configs/demo.yaml --set training.schedule=constant --set training.warmup_steps=0
   --steps 30 --target-steps 480 --replicates 4 --lr-start 0.01 --lr-stop 1`; from its ramp.json:
   the lr at 5% risk for 480 steps, the recommended lr, what the answer holds for, its confirmation
   and its cost (probes, training FLOPs, probe seconds; the command's wall time);
2. `--seeds` fresh seeds (2000 + i: the ramp's own are training.seed 0, its replicates 0..3 and its
   confirmation seeds 1000 + i) trained at 480 steps at the stated 5%-risk lr: failures are every
   verdict but stable (diverged, stalled, an error);
3. the largest lr at which those seeds fail at most once: lrs x`--factor`^k above the stated one
   (or x each of `--multipliers`; below it, where the stated one failed twice or more) until one
   fails twice; a point stops at its second failure;
4. the cost against a grid at the target budget: every lr of the ramp's range at its resolution
   (lr-start x 1.25^k, as bench/ramp_vs_grid.py), one seed (the config's), 480 steps. `--grid run`
   trains it; `--grid estimate` counts 480 steps a point at the measured FLOPs a step (an upper
   bound: a divergence stops early). `--grid-seeds K` runs K seeds a point (0..K-1): the grid that
   gives the evidence the ramp's `--replicates 4` gives (P(fails | lr) at every lr), next to the
   one-seed grid that gives one seed's boundary.
On a machine with a GPU, `CUDA_VISIBLE_DEVICES=` keeps every run on the CPU (the ramp's and the
seeds'), as on the machine the issue's table came from.
Runs train in-process (`stablesweep.train`) in a pool of `--procs` processes of 1 torch thread.
Every finished run is appended to OUT/runs.jsonl, so a second start reuses them; `--ramp-dir` reads
a ramp that already ran this command instead of starting it. Prints a table, writes OUT/target_budget.json.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "configs" / "demo.yaml"
FIXED = {"training__schedule": "constant", "training__warmup_steps": 0}
TARGET, PROBE_STEPS, REPLICATES, LR_START, LR_STOP = 480, 30, 4, 0.01, 1.0
SEED_BASE = 2000  # fresh seeds: the ramp runs seeds 0..3 and 1000 + i
STABLE = "stable"


def ramp_command(out: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "stablesweep", "ramp", str(DEMO), "--set", "training.schedule=constant",
            "--set", "training.warmup_steps=0", "--steps", str(PROBE_STEPS), "--target-steps", str(TARGET),
            "--replicates", str(REPLICATES), "--lr-start", str(LR_START), "--lr-stop", str(LR_STOP),
            "--out", str(out), "--name", name]


def machine() -> str:
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    return f"{os.cpu_count()} CPUs ({platform.machine()}){', CUDA hidden: every run on the CPU' if hidden else ''}"


def load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def run_ramp(out: Path, ramp_dir: str | None) -> dict:
    """The ramp's answer and cost from its ramp.json (running the command first unless `ramp_dir`)."""
    wall, loads = None, None
    if ramp_dir is None:
        name = f"demo480-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = ramp_command(out / "ramp", name)
        print("#", " ".join(cmd[2:]), flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.setdefault("STABLESWEEP_RAY_NODE_IP", "127.0.0.5")
        before, t0 = load(), time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        wall, loads = time.perf_counter() - t0, (before, load())
        ramp_dir = str(out / "ramp" / name)
    doc = json.loads((Path(ramp_dir) / "ramp.json").read_text())
    s = doc["settings"][0]
    probes = s["probe_list"]
    return {"ramp_dir": str(ramp_dir), "lr_at_5pct_risk": s.get("lr_at_5pct_risk"),
            "lr_at_5pct_risk_interval": s.get("lr_at_5pct_risk_interval"), "lr_at_50pct": s.get("lr_at_50pct"),
            "recommended_lr": s.get("recommended_lr"), "holds_for": s.get("holds_for"),
            "confirmation": s.get("confirmation"), "budgets": s.get("budgets"), "probes": s["probes"],
            "probe_runs": len(probes), "probe_steps": sum(p["steps"] - p.get("start_step", 0) for p in probes),
            "train_flops": s["train_flops"], "compute_s": s["compute_s"], "command_wall_s": wall,
            # every run of probe_list (ramp.json's train_flops and compute_s leave replicates out)
            "all_runs_flops": sum(p["train_flops"] for p in probes), "all_runs_s": sum(p["wall_s"] for p in probes),
            "replicate_runs": sum(p["phase"] == "replicate" for p in probes),
            "replicate_flops_all": sum(p["train_flops"] for p in probes if p["phase"] == "replicate"),
            "load_before_after": loads, "evidence": s.get("evidence"),
            "flops_per_step": next((p["train_flops"] / (p["steps"] - p.get("start_step", 0)) for p in probes
                                    if p["verdict"] == STABLE and p["steps"] > p.get("start_step", 0)), None)}


# ---- the runs ------------------------------------------------------------------------------------

def _init() -> None:
    import torch

    torch.set_num_threads(1)


def train_one(lr: float, seed: int, steps: int = TARGET) -> dict:
    import stablesweep

    t0 = time.perf_counter()
    try:
        r = stablesweep.train(str(DEMO), log=None, training__steps=steps, training__lr=lr, training__seed=seed,
                              **FIXED)
        res = r.result
        return {"lr": lr, "seed": seed, "verdict": r.verdict, "reason": r.reason, "steps": r.steps,
                "first_bad_step": r.first_bad_step, "train_flops": res.train_flops,
                "flops_per_step": res.flops_per_step, "wall_s": time.perf_counter() - t0}
    except Exception as e:  # an error is a failure too, with its message
        return {"lr": lr, "seed": seed, "verdict": "error", "reason": f"{type(e).__name__}: {e}"[:300],
                "steps": 0, "first_bad_step": -1, "train_flops": 0.0, "flops_per_step": None,
                "wall_s": time.perf_counter() - t0}


class Runs:
    """Runs of (kind, lr, seed) in a pool, each appended to a JSONL file as it ends (and read back)."""

    def __init__(self, path: Path, procs: int, steps: int = TARGET):
        self.path, self.procs, self.pool, self.steps = path, procs, None, steps
        self.done: dict[tuple, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                x = json.loads(line)
                self.done[(x["kind"], x["lr"], x["seed"])] = x

    def _pool(self):
        if self.pool is None:
            self.pool = mp.get_context("spawn").Pool(self.procs, initializer=_init)
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()  # runs still going are not needed
            self.pool.join()
            self.pool = None

    def _record(self, kind: str, x: dict) -> dict:
        x = {"kind": kind, **x}
        self.done[(kind, x["lr"], x["seed"])] = x
        with self.path.open("a") as f:
            f.write(json.dumps(x) + "\n")
        return x

    def batch(self, kind: str, lr: float, seeds: list[int], stop_at_failures: int | None = None) -> list[dict]:
        """Train `lr` at `seeds` (those not done yet); stop once `stop_at_failures` failed."""
        out = [self.done[(kind, lr, s)] for s in seeds if (kind, lr, s) in self.done]
        todo = [s for s in seeds if (kind, lr, s) not in self.done]

        def failed() -> int:
            return sum(x["verdict"] != STABLE for x in out)

        if stop_at_failures is not None and failed() >= stop_at_failures:
            return out
        results: queue.Queue = queue.Queue()
        pool, running = self._pool(), 0
        while todo or running:
            while todo and running < self.procs:
                pool.apply_async(train_one, (lr, todo.pop(0), self.steps), callback=results.put,
                                 error_callback=lambda e: results.put({"lr": lr, "seed": -1, "verdict": "error",
                                                                        "reason": repr(e), "steps": 0,
                                                                        "train_flops": 0.0, "wall_s": 0.0}))
                running += 1
            x = self._record(kind, results.get())
            running -= 1
            out.append(x)
            print(f"  {kind} lr {lr:.4g} seed {x['seed']}: {x['verdict']}"
                  + (f" ({x['reason']} at step {x['first_bad_step']})" if x.get("reason") else "")
                  + f", {x['steps']} steps, {x['wall_s']:.0f} s, load {load()}", flush=True)
            if stop_at_failures is not None and failed() >= stop_at_failures:
                self.close()  # the runs in flight are not needed
                break
        return out


def seeds_at(runs: Runs, lr: float, n: int, stop: bool = True) -> dict:
    t0 = time.perf_counter()
    xs = runs.batch("seeds", lr, [SEED_BASE + i for i in range(n)], stop_at_failures=2 if stop else None)
    bad = [x for x in xs if x["verdict"] != STABLE]
    return {"lr": lr, "runs": len(xs), "failures": len(bad), "complete": len(xs) == n,
            "verdicts": {v: sum(x["verdict"] == v for x in xs) for v in sorted({x["verdict"] for x in xs})},
            "failed": [{"seed": x["seed"], "verdict": x["verdict"], "reason": x.get("reason"),
                        "first_bad_step": x.get("first_bad_step")} for x in bad],
            "wall_s": time.perf_counter() - t0, "train_s": sum(x["wall_s"] for x in xs), "load": load()}


def walk(runs: Runs, stated: float, n: int, steps_up: list[float]) -> tuple[list[dict], float | None]:
    """The stated lr, then the lrs stated x m for m in `steps_up` (increasing) until one fails at
    least twice; where the stated lr failed twice, down by the same multipliers' inverses until one
    fails at most once. Returns the points and the largest lr tried that failed at most once (None:
    none found; where no lr failed twice, the largest tried is a lower bound)."""
    first = seeds_at(runs, stated, n)
    print(f"# stated lr {stated:.4g}: {first['failures']}/{first['runs']} failed", flush=True)
    points, up = [first], first["failures"] <= 1
    best = stated if up else None
    for m in steps_up:
        lr = float(f"{stated * m:.4g}") if up else float(f"{stated / m:.4g}")
        p = seeds_at(runs, lr, n)
        points.append(p)
        print(f"# lr {lr:.4g} (x{m if up else 1 / m:.3g} the stated): {p['failures']}/{p['runs']} failed", flush=True)
        if up and p["failures"] >= 2:
            break
        if up:
            best = lr
        elif p["failures"] <= 1:
            best = lr
            break
    return points, best


def grid_lrs(resolution: float) -> list[float]:
    n = math.ceil(math.log(LR_STOP / LR_START) / math.log(resolution))
    return [float(f"{LR_START * resolution ** k:.6g}") for k in range(n + 1)]


def grid_steps_estimate(lrs: list[float], probes: list[dict]) -> list[int]:
    """The steps each grid point would run at the target, from the ramp's own runs at the target of
    the grid's seed (the config's): those of the probe nearest in log lr (a divergence stops early)."""
    own = [(p["lr"], p["steps"]) for p in probes if p.get("budget") == TARGET and p.get("seed") in (None, 0)
           and p["phase"] != "confirm"]
    return [min(own, key=lambda x: abs(math.log(x[0] / lr)))[1] if own else TARGET for lr in lrs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "target_budget"))
    ap.add_argument("--ramp-dir", default=None, help="a finished ramp of this command (default: run it)")
    ap.add_argument("--ramp-wall-s", type=float, default=None, help="with --ramp-dir: its command's wall time")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--factor", type=float, default=1.25, help="the lr grid above the stated lr: x factor^k")
    ap.add_argument("--max-lrs", type=int, default=8, help="lrs tried above the stated one")
    ap.add_argument("--multipliers", default=None,
                    help="the lrs above the stated one as multiples of it, e.g. 2,2.83,4 (default: the --factor grid)")
    ap.add_argument("--grid", choices=("run", "estimate"), default="estimate")
    ap.add_argument("--grid-seeds", type=int, default=1, help="with --grid run: seeds a point (0..K-1)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ramp = run_ramp(out, args.ramp_dir)
    if args.ramp_dir and args.ramp_wall_s:
        ramp["command_wall_s"] = args.ramp_wall_s
    stated = ramp["lr_at_5pct_risk"]
    print(f"# ramp: lr at 5% risk {stated}, recommended {ramp['recommended_lr']}, holds for {ramp['holds_for']}; "
          f"{ramp['confirmation']}; {ramp['probes']} probes, {ramp['train_flops']:.3g} FLOPs, "
          f"{ramp['compute_s']:.0f} probe s, command {ramp['command_wall_s'] or 0:.0f} s", flush=True)
    runs = Runs(out / "runs.jsonl", args.procs)
    try:
        ups = ([float(m) for m in args.multipliers.split(",")] if args.multipliers
               else [args.factor ** k for k in range(1, args.max_lrs + 1)])
        points, largest = walk(runs, stated, args.seeds, ups) if stated else ([], None)
        lrs = grid_lrs(1.25)
        g0 = time.perf_counter()
        grid_runs = None
        if args.grid == "run":
            grid_runs = [x for lr in lrs for x in runs.batch("grid", lr, list(range(args.grid_seeds)))]
        grid_wall = time.perf_counter() - g0
    finally:
        runs.close()
    fps = ramp["flops_per_step"] or next((x["flops_per_step"] for x in runs.done.values() if x.get("flops_per_step")))
    probes = json.loads((Path(ramp["ramp_dir"]) / "ramp.json").read_text())["settings"][0]["probe_list"]
    est = grid_steps_estimate(lrs, probes)
    grid = {"lrs": lrs, "points": len(lrs), "flops_per_step": fps, "flops_estimate_upper": fps * TARGET * len(lrs),
            "steps_estimate": est, "flops_estimate": fps * sum(est)}
    if grid_runs:
        one = [x for x in grid_runs if x["seed"] == 0]
        grid.update(flops=sum(x["train_flops"] for x in one), train_s=sum(x["wall_s"] for x in one),
                    wall_s=grid_wall, steps=sum(x["steps"] for x in one),
                    verdicts={x["lr"]: x["verdict"] for x in one}, load=load())
        if args.grid_seeds > 1:  # the grid with the ramp's evidence: K seeds at every lr
            grid.update(seeds=args.grid_seeds, flops_k=sum(x["train_flops"] for x in grid_runs),
                        train_s_k=sum(x["wall_s"] for x in grid_runs),
                        failures_k={lr: sum(x["verdict"] != STABLE for x in grid_runs if x["lr"] == lr) for lr in lrs})
    first = points[0] if points else {}
    result = {
        "command": " ".join(ramp_command(Path("OUT"), "NAME")[2:]), "machine": machine(),
        "ramp": ramp, "seeds": args.seeds, "seed_base": SEED_BASE, "multipliers": ups, "points": points,
        "stated_lr": stated, "failures_at_stated": first.get("failures"), "runs_at_stated": first.get("runs"),
        "largest_lr_at_most_1_failure": largest,
        "criterion_1_at_most_1_fails": first.get("failures", 99) <= 1 and first.get("complete", False),
        # no lr tried failed twice: the largest lr that failed at most once is at least `largest`
        "largest_is_lower_bound": bool(points) and first.get("failures", 0) <= 1
        and not any(p["failures"] >= 2 for p in points),
        "ratio_largest_to_stated": (largest / stated) if largest and stated else None,
        "grid": grid, "bench_wall_s": time.perf_counter() - t_start, "load": load()}
    # criterion 2: the stated lr is not more than 2x below the largest lr failing at most once (None: unknown)
    within = bool(largest and stated and largest <= 2 * stated * (1 + 1e-3))  # the lrs are rounded to 4 digits
    result["criterion_2_within_2x"] = None if within and result["largest_is_lower_bound"] else within
    g_flops = grid.get("flops", grid["flops_estimate_upper"])
    total = ramp["all_runs_flops"]
    result["ramp_over_grid_flops"] = total / g_flops
    result["ramp_over_grid_flops_upper"] = total / grid["flops_estimate_upper"]
    result["ramp_over_grid_flops_estimate"] = total / grid["flops_estimate"]
    if grid.get("train_s"):
        result["ramp_over_grid_train_s"] = ramp["all_runs_s"] / grid["train_s"]
    # the grid that gives the ramp's evidence (P(fails | lr) at every lr): K seeds a point, as run or
    # K x the one-seed grid's FLOPs (measured, else estimated)
    one = grid.get("flops", grid["flops_estimate"])
    k_seeds = grid.get("seeds") or REPLICATES
    grid["flops_k_seeds"] = grid.get("flops_k") or k_seeds * one
    result["ramp_over_grid_k_flops"] = total / grid["flops_k_seeds"]
    reps = ramp["replicate_flops_all"]
    result["ramp_without_replicates_over_grid_flops"] = (total - reps) / one
    (out / "target_budget.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| lr | x stated | fresh seeds at 480 steps | failed | verdicts | train s (sum) | load |\n|---|---|---|---|---|---|---|")
    for p in points:
        print(f"| {p['lr']:.4g}{' (stated)' if p is first else ''} | {p['lr'] / stated:.2f} | "
              f"{p['runs']}{'' if p['complete'] else ' (stopped at the 2nd failure)'} | {p['failures']} | "
              f"{', '.join(f'{k} {v}' for k, v in p['verdicts'].items())} | {p['train_s']:.0f} | {p['load']} |")
    print(f"\nstated lr at 5% risk for {TARGET} steps: {stated:.4g} (recommended {ramp['recommended_lr']}); "
          f"{first.get('failures')}/{first.get('runs')} fresh seeds failed there: "
          f"criterion 1 (at most 1 of {args.seeds}) {'holds' if result['criterion_1_at_most_1_fails'] else 'FAILS'}")
    print(f"largest lr with at most 1 of {args.seeds} failed: {largest}"
          f"{' (a lower bound: no lr tried failed twice)' if result['largest_is_lower_bound'] else ''}; ratio to the stated lr "
          f"{result['ratio_largest_to_stated'] or float('nan'):.2f}: criterion 2 (stated within 2x below it) "
          f"{ {True: 'holds', False: 'FAILS', None: 'unknown'}[result['criterion_2_within_2x']] }")
    print(f"cost: ramp {ramp['probe_runs']} runs, {total:.3g} FLOPs, {ramp['all_runs_s']:.0f} probe s (ramp.json: "
          f"{ramp['probes']} probes, {ramp['train_flops']:.3g} FLOPs, {ramp['compute_s']:.0f} s, replicates left out), "
          f"command {ramp['command_wall_s'] or 0:.0f} s; grid of {len(lrs)} lrs at {TARGET} steps "
          f"{g_flops:.3g} FLOPs{' (measured)' if 'flops' in grid else ' (upper bound: 480 steps a point)'}, "
          f"{grid['flops_estimate']:.3g} FLOPs estimated from the ramp's seed-0 runs' steps "
          f"(ramp / that {result['ramp_over_grid_flops_estimate']:.2f})"
          + (f", {grid['train_s']:.0f} train s" if grid.get("train_s") else "")
          + f": ramp / grid FLOPs {result['ramp_over_grid_flops']:.2f}; load average {load()}")
    print(f"the ramp's replicates {ramp['replicate_runs']} runs, {reps:.3g} FLOPs; without them the ramp / the one-seed grid "
          f"{result['ramp_without_replicates_over_grid_flops']:.2f}; the ramp / the grid of {k_seeds} seeds a point "
          f"({grid['flops_k_seeds']:.3g} FLOPs{'' if grid.get('flops_k') else ', estimated'}: the same evidence) "
          f"{result['ramp_over_grid_k_flops']:.2f}")


if __name__ == "__main__":
    main()
