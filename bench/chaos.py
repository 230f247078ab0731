"""Fault injection into a tiny sweep or ramp, then one `--resume`, then the exactly-once check.

A sweep round runs `stablesweep sweep` on the demo config over a 2 x 2 grid (lr 1e-2 / 1e3, clip
none / 1.0; four trials, two at a time, a few report intervals each) with its `--out` on a tmpfs
of its own, injects one fault at one moment, waits for the driver to end, undoes the fault (frees
the space, makes the folder writable again), runs `--resume` once and checks the invariant:

- trials.csv: the four grid points, each in exactly one trial, none `unfinished`;
- Optuna (`optuna.db`): each trial of the table exactly one Optuna trial with its verdict, nothing
  RUNNING or WAITING; any other trial is `abandoned` or was run again (`rerun_of`);
- MLflow: one parent run (FINISHED), exactly one child run a trial of the table, none RUNNING.

A ramp round (`--commands sweep,ramp`) runs `stablesweep ramp` on the demo config (lr 0.04 to
0.32 on the x2 ladder, two probes at a time, a few report intervals each, no samples after the
bracket) in the same way, and checks the ramp's invariant (`ramp_exactly_once_problems`): every
probe of ramp.json under its own trial, one MLflow child run a probe with the probe's verdict, one
parent run, FINISHED, nothing RUNNING.

Faults: SIGINT, SIGTERM or SIGKILL of the driver, SIGKILL of a trial's worker, the disk filled
(ENOSPC), the output folder made read-only. Moments: a wall time after the start, or an event seen
in the sweep folder (the first trial result, the first checkpoint, the first trial ended, the answer
written: trials.csv of a sweep, ramp.json of a ramp; the moment is named `trials_csv` for both),
each plus a random delay of up to 2 s. The choice of command, fault, moment and delay is fixed by
--seed; the faults take turns so that each gets its share of the rounds, and the commands take turns
by blocks of one round of each fault.

    python bench/chaos.py --rounds 60 --minutes 15 --seed 0
    python bench/chaos.py --rounds 60 --jobs 8 --seed 0     # 8 rounds at once on a bigger machine
    python bench/chaos.py --rounds 12 --jobs 2 --seed 3 --commands sweep,ramp

With --jobs N, N rounds run at once, each with its own tmpfs, --out, local Ray (its own temp
folder, RAY_TMPDIR, so that no round reads another's staged Tune state) and logs; a round's plan
(fault, moment, delay) is the same whatever N. It runs the stablesweep of --root (default this
checkout) with --root put first on PYTHONPATH, before what PYTHONPATH holds already (so the
libraries may come from there, without a virtual environment).

Needs root (mount). Every process it starts runs in a session of its own and its whole group is
killed by id when the round ends, whatever happened; a Ctrl-C (or SIGTERM) to the harness starts
no further round and kills the process groups of the rounds running (its own, by id). Prints a
table (command x fault x moment: rounds, held) and writes one JSON line a round to --log.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stablesweep.sweep.invariant import exactly_once_problems, ramp_exactly_once_problems  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"
GRID = "training.lr: {grid: [1.0e-2, 1.0e+3]}\ntraining.max_grad_norm: {choice: [null, 1.0]}\n"
N_SETTINGS = 4
# the tiny ramp: the demo at 15 steps, lr 0.04..0.32 on the x2 ladder, two probes at a time
RAMP = ["--lr-start", "0.04", "--lr-stop", "0.32", "--ladder", "x2", "--climb", "step", "--parallel", "2",
        "--samples", "0"]
COMMANDS = ("sweep", "ramp")
FAULTS = ("sigint", "sigterm", "sigkill_driver", "sigkill_worker", "enospc", "readonly")
MOMENTS = ("wall", "first_result", "checkpoint", "trial_end", "trials_csv")
EXPECTED_EXIT = {"sigint": 130, "sigterm": 143, "enospc": 74, "readonly": 74}


def plan_rounds(n: int, seed: int, commands: tuple[str, ...] = ("sweep",)) -> list[tuple[str, str, str, float]]:
    """(command, fault, moment, delay) a round. The faults take turns; the commands take turns by blocks
    of one round of each fault; with the sweep alone the plan of a seed is what it was before ramps."""
    rng = random.Random(seed)
    rounds = []
    for i in range(n):
        moment = rng.choice(MOMENTS)
        delay = rng.uniform(3.0, 40.0) if moment == "wall" else rng.uniform(0.0, 2.0)
        command = commands[(i // len(FAULTS)) % len(commands)]
        rounds.append((command, FAULTS[i % len(FAULTS)], moment, round(delay, 2)))
    return rounds


# ---- processes ---------------------------------------------------------------------------------

STOP = threading.Event()  # set when the harness is stopped: no round starts another process


class Procs:
    """Every process group a round started, killed by id on exit."""

    def __init__(self):
        self.groups: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict, cwd: str) -> subprocess.Popen:
        if STOP.is_set():
            raise subprocess.SubprocessError("the harness was stopped")
        p = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd, env=env,
                             start_new_session=True)
        self.groups.append(p)
        if STOP.is_set():  # stopped while it started: the harness's kill may have missed it
            kill_group(p.pid)
            raise subprocess.SubprocessError("the harness was stopped")
        return p

    def kill_all(self) -> None:
        for p in self.groups:
            kill_group(p.pid)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.groups.clear()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getpgid(int(d.name)) == pgid:
                out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, ProcessLookupError):
            continue
    return out


def _stat(pid: str) -> tuple[int, int]:
    """(parent pid, process group) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2])


def trial_worker(pgids: set[int]) -> int | None:
    """The pid of a Ray worker running a trial (its process title names the trainable) whose raylet
    (its parent: Ray starts workers in sessions of their own) is in one of the process groups
    `pgids` (the driver's, that started its own Ray, or the shared Ray's)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("ray::ImplicitFunc") and _stat(str(_stat(d.name)[0]))[1] in pgids:
                return int(d.name)
        except (OSError, ProcessLookupError, ValueError, IndexError):
            continue
    return None


# ---- one round ---------------------------------------------------------------------------------

# a command's files: where Tune's trials are (a ramp's Tune experiment is its folder's tune/), the
# line of a trial that ended, the answer file, and what --resume needs
TRIALS = {"sweep": "trial_*", "ramp": "tune/trial_*"}
ENDED = {"sweep": "[", "ramp": "    config lr "}
ANSWER = {"sweep": "trials.csv", "ramp": "ramp.json"}
STATE = {"sweep": "sweep.json", "ramp": "run.json"}


def moment_reached(moment: str, run_dir: Path, log: Path, since: float, delay: float, command: str = "sweep") -> bool:
    if moment == "wall":
        return time.time() - since >= delay
    if moment == "first_result":
        return any(p.stat().st_size > 0 for p in run_dir.glob(f"{TRIALS[command]}/result.json"))
    if moment == "checkpoint":
        return bool(list(run_dir.glob(f"{TRIALS[command]}/checkpoint_*")))
    if moment == "trial_end":
        return any(ln.startswith(ENDED[command]) for ln in log.read_text(errors="replace").splitlines())
    if moment == "trials_csv":
        return (run_dir / ANSWER[command]).exists()
    raise ValueError(moment)


def round_command(command: str, args, work: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "stablesweep", command, str(DEMO)]
    if command == "sweep":
        cmd += ["--space", str(work / "grid.yaml"), "--sampler", "grid", "--no-asha"]
    else:
        cmd += [*RAMP, "--target-steps", str(args.steps)]
    cmd += ["--steps", str(args.steps), "--set", "training.report_interval=5", "--max-concurrent", "2",
            "--out", str(out), "--name", "c"]
    return cmd + (["--address", args.address] if args.address else [])


def invariant_problems(command: str, run_dir: Path) -> list[str]:
    if command == "sweep":
        return exactly_once_problems(run_dir, N_SETTINGS)
    return ramp_exactly_once_problems(run_dir)


def fill(mnt: Path) -> None:
    chunk = b"\0" * (1 << 20)
    with open(mnt / "filler", "wb") as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    try:  # the last bytes too
        with open(mnt / "filler2", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass


def round_env(args, i: int) -> dict:
    """The environment of round i's runs: --root first on PYTHONPATH (then what it held); with
    --jobs > 1, a Ray temp folder of the round's own (short: Ray's socket paths must fit in 107
    bytes), so that a resume reads its own round's staged Tune state."""
    path = [str(args.root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                               if p and Path(p).resolve() != Path(args.root).resolve()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    if not args.address:
        env["RAY_ADDRESS"] = "local"
        if args.jobs > 1:
            env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"ssc{i}-", dir="/tmp")
    return env


def run_round(i: int, command: str, fault: str, moment: str, delay: float, args, procs: Procs, work: Path) -> dict:
    rec = {"round": i, "command": command, "fault": fault, "moment": moment, "delay": delay}
    mnt = work / f"r{i:03d}"
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(mnt)], check=True)
    env: dict = {}
    try:
        env.update(round_env(args, i))
        out = mnt / "out"
        cmd = round_command(command, args, work, out)
        log1, log2 = work / f"r{i:03d}.first.log", work / f"r{i:03d}.resume.log"
        t0 = time.time()
        first = procs.start(cmd, log1, env, str(args.root))
        deadline = t0 + args.round_timeout
        while time.time() < deadline and first.poll() is None \
                and not moment_reached(moment, out / "c", log1, t0, delay, command):
            time.sleep(0.05)
        if moment != "wall" and first.poll() is None:
            time.sleep(delay)
        rec["injected_at_s"] = round(time.time() - t0, 1)
        rec["injected"] = first.poll() is None  # False: the sweep ended before the moment came
        rec["after_outputs"] = (out / "c" / ANSWER[command]).exists()  # the run had written its answer
        if rec["injected"]:
            if fault == "sigint":
                os.kill(first.pid, signal.SIGINT)
            elif fault == "sigterm":
                os.kill(first.pid, signal.SIGTERM)
            elif fault == "sigkill_driver":
                os.kill(first.pid, signal.SIGKILL)
            elif fault == "sigkill_worker":
                pids = {first.pid} | ({args.ray_pgid} if args.ray_pgid else set())
                pid = None
                while pid is None and first.poll() is None and time.time() < deadline:
                    pid = trial_worker(pids)
                    time.sleep(0.05)
                rec["injected"] = pid is not None
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
            elif fault == "enospc":
                fill(mnt)
            elif fault == "readonly":
                # the folder read-only from now on: a read-only bind mount of --out over itself (a
                # remount of the tmpfs is refused while sqlite holds its files open for writing;
                # files already open stay writable, every new open for writing gets EROFS)
                subprocess.run(["mount", "--bind", str(out), str(out)], check=True)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
        try:
            first.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            rec["hung"] = True
            kill_group(first.pid)
            first.wait(timeout=30)
        rec["first_rc"] = first.returncode
        if fault == "sigkill_driver" and not args.address:
            time.sleep(1.0)
            rec["left_1s_after_kill"] = len(group_members(first.pid))
        kill_group(first.pid)  # the Ray it started, if any
        text = log1.read_text(errors="replace")
        rec["first_resume_hint"] = "--resume" in text
        rec["first_traceback"] = "Traceback" in text
        if fault == "enospc":
            for f in ("filler", "filler2"):
                (mnt / f).unlink(missing_ok=True)
        elif fault == "readonly" and rec["injected"]:
            subprocess.run(["umount", "-l", str(out)], check=True)
        # stopped before the run was recorded (no sweep.json, run.json): --resume refuses ("no sweep at"),
        # exit 2, and the same command again starts it, which is what one does then
        rec["before_record"] = not (out / "c" / STATE[command]).exists()
        second = procs.start(cmd + ([] if rec["before_record"] else ["--resume"]), log2, env, str(args.root))
        try:
            second.wait(timeout=args.round_timeout)
        except subprocess.TimeoutExpired:
            rec["resume_hung"] = True
            kill_group(second.pid)
            second.wait(timeout=30)
        kill_group(second.pid)
        rec["resume_rc"] = second.returncode
        rtext = log2.read_text(errors="replace")
        rec["resume_traceback"] = "Traceback" in rtext
        problems = [] if second.returncode in (0, 1) else [f"resume exit {second.returncode}: "
                                                           + rtext.strip().splitlines()[-1][:200] if rtext.strip() else ""]
        try:
            problems += invariant_problems(command, out / "c")
        except Exception as e:  # an unreadable store is a failed round, not a crashed harness
            problems.append(f"check failed: {type(e).__name__}: {e}")
        rec["problems"] = problems
        rec["held"] = not problems
        want = EXPECTED_EXIT.get(fault)
        # as documented: the fault's exit status with the resume command (none to give before the
        # sweep was recorded), or, for a fault that came once the sweep had written its answer, exit 0
        rec["exit_ok"] = (want is None or not rec["injected"]
                          or (rec["first_rc"] == want and (rec["first_resume_hint"] or rec["before_record"]))
                          or (rec["first_rc"] == 0 and rec["after_outputs"]))
        rec["wall_s"] = round(time.time() - t0, 1)
        return rec
    finally:
        procs.kill_all()
        if fault == "readonly":
            subprocess.run(["umount", "-l", str(out)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
        if args.jobs > 1 and "RAY_TMPDIR" in env:
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def table(records: list[dict]) -> str:
    cells: dict[tuple[str, str, str], list[dict]] = collections.defaultdict(list)
    for r in records:
        cells[(r.get("command", "sweep"), r["fault"], r["moment"])].append(r)
    lines = ["| command | fault | moment | rounds | injected | held | exit code and resume command as documented |",
             "|---|---|---|---|---|---|---|"]
    for (c, f, m) in sorted(cells, key=lambda k: (COMMANDS.index(k[0]), FAULTS.index(k[1]), MOMENTS.index(k[2]))):
        rs = cells[(c, f, m)]
        lines.append(f"| {c} | {f} | {m} | {len(rs)} | {sum(bool(r.get('injected')) for r in rs)} | "
                     f"{sum(r.get('held') is True for r in rs)} | "
                     f"{sum(r.get('exit_ok') is True for r in rs) if f in EXPECTED_EXIT else '-'} |")
    n, held = len(records), sum(r.get("held") is True for r in records)
    ok = sum(r.get("exit_ok") is True for r in records if r["fault"] in EXPECTED_EXIT)
    lines.append(f"| **all** | | | {n} | {sum(bool(r.get('injected')) for r in records)} | {held} | "
                 f"{ok} of {sum(r['fault'] in EXPECTED_EXIT for r in records)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="skip the first N planned rounds (go on with a log)")
    ap.add_argument("--minutes", type=float, default=None, help="start no round after this many minutes")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of " + ",".join(FAULTS))
    ap.add_argument("--moments", default=",".join(MOMENTS), help="comma-separated subset of " + ",".join(MOMENTS))
    ap.add_argument("--commands", default="sweep", help="comma-separated commands the rounds run, taking turns: "
                    + ",".join(COMMANDS) + " (default: sweep)")
    ap.add_argument("--address", default=None, help="a Ray cluster every run joins (default: each run its own Ray)")
    ap.add_argument("--tmpfs-mb", type=int, default=300)
    ap.add_argument("--round-timeout", type=float, default=240.0)
    ap.add_argument("--root", default=str(ROOT), help="the stablesweep checkout the sweeps run (default: this one)")
    ap.add_argument("--work", default=None, help="work folder (default: a new temporary one, removed at the end)")
    ap.add_argument("--log", default=None, help="one JSON line a round (default: WORK/rounds.jsonl)")
    ap.add_argument("--jobs", type=int, default=1, help="rounds run at once (each its own tmpfs, --out and Ray)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        print("--jobs: at least 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/chaos.py: needs root (it mounts a tmpfs a round)", file=sys.stderr)
        return 2
    faults, moments = args.faults.split(","), args.moments.split(",")
    if not set(faults) <= set(FAULTS):
        print(f"--faults: expected some of {','.join(FAULTS)}", file=sys.stderr)
        return 2
    commands = tuple(args.commands.split(","))
    if not commands or not set(commands) <= set(COMMANDS) or len(set(commands)) != len(commands):
        print(f"--commands: expected some of {','.join(COMMANDS)}, each once", file=sys.stderr)
        return 2
    args.ray_pgid = None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="stablesweep-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "grid.yaml").write_text(GRID)
    logf = Path(args.log) if args.log else work / "rounds.jsonl"
    live: list[Procs] = []  # the process groups of the rounds running, each round's own

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started with SIGINT ignored (`python bench/chaos.py ... &`)
    start = time.time()
    records: list[dict] = []
    rounds = [r for r in plan_rounds(args.rounds * len(FAULTS) * len(MOMENTS) * 4, args.seed, commands)
              if r[1] in faults and r[2] in moments][:args.rounds]

    def one(i: int, command: str, fault: str, moment: str, delay: float) -> dict:
        procs = Procs()
        live.append(procs)
        try:
            return run_round(i, command, fault, moment, delay, args, procs, work)
        except (OSError, subprocess.SubprocessError) as e:  # the harness's own step failed: say so, go on
            return {"round": i, "command": command, "fault": fault, "moment": moment, "delay": delay, "held": None,
                    "problems": [f"harness: {type(e).__name__}: {e}"]}
        finally:
            procs.kill_all()
            live.remove(procs)

    def done(rec: dict) -> None:
        records.append(rec)
        with logf.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"round {rec['round']}: {rec.get('command', 'sweep'):5s} {rec['fault']:15s} {rec['moment']:12s} "
              f"+{rec['delay']:5.1f}s  first exit "
              f"{rec.get('first_rc')}, resume exit {rec.get('resume_rc')}, {'held' if rec.get('held') else 'BROKEN'}"
              + ("" if rec.get("injected", True) else " (the run ended before the moment)")
              + (f": {'; '.join(rec['problems'])}" if rec.get("problems") else ""), flush=True)

    todo = [(i, *r) for i, r in enumerate(rounds) if i >= args.start]
    in_time = lambda: args.minutes is None or time.time() - start <= args.minutes * 60  # noqa: E731
    pool = concurrent.futures.ThreadPoolExecutor(args.jobs) if args.jobs > 1 else None
    try:
        if pool is None:  # one round at a time, in this thread
            for r in todo:
                if not in_time():
                    break
                done(one(*r))
        else:  # up to --jobs rounds at once; a new one starts as one ends, while --minutes allow
            running: set[concurrent.futures.Future] = set()
            while todo or running:
                while todo and len(running) < args.jobs and in_time():
                    running.add(pool.submit(one, *todo.pop(0)))
                if not running:
                    break
                finished, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for f in finished:
                    done(f.result())
    except KeyboardInterrupt:
        print("stopped: no further round; killing the rounds running", file=sys.stderr, flush=True)
    finally:
        STOP.set()  # no round starts another process from now on
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C would cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for procs in list(live):  # the groups of rounds still running (theirs only, by id)
            procs.kill_all()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    print(f"\nbench/chaos.py --seed {args.seed}: {len(records)} rounds in {(time.time() - start) / 60:.1f} min, "
          f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs; log {logf}\n")
    print(table([json.loads(ln) for ln in logf.read_text().splitlines() if ln.strip()] if logf.exists() else records))
    return 0 if records and all(r.get("held") for r in records) else 1  # the table: every round of the log


if __name__ == "__main__":
    sys.exit(main())
