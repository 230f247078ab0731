"""Options and their values that several commands share, so that no command module imports
another: --set (`add_set_argument`), the options of a run on a multi-node cluster
(`add_cluster_arguments`, of `sweep` and `ramp`), the command line that continues a stopped sweep
or ramp (`resume_command`), and the MLflow store a reading command uses when --mlflow is not given
(`resolve_uri`, of `compare` and `explain`).
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from stablesweep.vocab import InputError

DEFAULT_STORE = Path("runs/mlflow.db")  # where `stablesweep sweep` and `ramp` keep it by default


def add_set_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted (repeatable): --set training.lr=2e-6 "
                        "--set loss.masking=slice")


def add_cluster_arguments(p: argparse.ArgumentParser, command: str, unit: str, default_local: str, files: str) -> None:
    """The options of a run on a multi-node Ray cluster, shared by `sweep` and `ramp` (whose runs
    are made of `unit`s: trials, probes)."""
    p.add_argument("--shared-storage", action="store_true",
                   help="declare that the --out path is the same storage on every node of the cluster (an NFS "
                        "mount at the same path); required for a path --out on a multi-node cluster")
    p.add_argument("--local-dir", default=None, metavar="DIR",
                   help=f"with a URI --out: where the {command}'s own files go on "
                        f"this (the driver's) machine: {files} and DIR/mlflow.db (default {default_local}, "
                        "with the MLflow store in runs/mlflow.db)")
    p.add_argument("--max-failures", type=int, default=None, metavar="N",
                   help=f"retry a failed {unit} (e.g. its worker node was lost) up to N times from its last "
                        "checkpoint (default: 2 on a multi-node cluster, 1 on one node)")
    p.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                   help=f"data-parallel {unit}s: each {unit} is a Ray Train TorchTrainer run of N DDP workers (gloo on "
                        f"CPU, NCCL on GPUs), and --cpus-per-trial, --gpus-per-trial and --resources-per-trial are "
                        f"each worker's: --workers-per-trial 2 --gpus-per-trial 1 trains a {unit} on 2 GPUs. Every "
                        f"global batch of training.batch_size (a multiple of N) is split among the workers. Default 1")
    p.add_argument("--no-reuse", dest="reuse", action="store_false",
                   help=f"start a new worker process for every {unit} (default: a {unit}'s worker runs the next "
                        f"{unit} of the same resources, so torch is imported and the data built once a worker; a "
                        f"reused worker trains bit for bit as a new one). Data-parallel {unit}s never reuse workers")
    p.add_argument("--resources-per-trial", type=resources_json, default=None, metavar="JSON",
                   help=f"custom Ray resources a {unit} needs, as JSON: '{{\"worker_node\": 1}}' runs {unit}s only "
                        "on nodes started with `ray start --resources '{\"worker_node\": N}'`")


def resources_json(text: str) -> dict:
    """--resources-per-trial's value: a JSON object of Ray resource names and amounts."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}); expected e.g. '{{\"worker_node\": 1}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of resource names and amounts, "
                                         "e.g. '{\"worker_node\": 1}'")
    return value


def resolve_uri(uri: str | None) -> str:
    """--mlflow of a command that reads runs: the URI given, else the default store of `stablesweep
    sweep` where it exists."""
    if uri:
        return uri
    if DEFAULT_STORE.is_file():  # absolute: MLflow keeps a store a URI, so a relative one outlives a chdir
        return f"sqlite:///{DEFAULT_STORE.resolve()}"
    raise InputError(f"no MLflow store at sqlite:///{DEFAULT_STORE} (tried {DEFAULT_STORE.resolve()}, the default of "
                     "`stablesweep sweep` and `ramp`); pass --mlflow URI: sqlite:///OUT/mlflow.db of a `sweep --out OUT`, "
                     "or a server such as http://127.0.0.1:5000")


def resume_command(argv: list[str], name: str, command: str) -> str:
    """This very command line (`stablesweep COMMAND ...`), with --name and --resume: the same config,
    space and overrides."""
    args = list(argv[1:])
    if command in args:
        args = args[args.index(command):]
    if "--name" not in args and not any(a.startswith("--name=") for a in args):
        args += ["--name", name]
    if "--resume" not in args:
        args.append("--resume")
    return "stablesweep " + shlex.join(args)


def add_budget_arguments(p: argparse.ArgumentParser, runs: str, recommended: str, probes_flag: str) -> None:
    """--max-steps and --confirm, as `sweep` and `ramp` both take them (--target-steps, whose default
    differs, each adds itself): `runs` names what the rungs run, `recommended` what is confirmed."""
    p.add_argument("--max-steps", type=int, default=None, metavar="M",
                   help=f"the longest {runs} may run (default: the target); a target beyond it is out of "
                        "reach and the answer says \"extrapolated from M steps\"")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help=f"run {recommended} at the target with K fresh seeds before calling it recommended; a failure "
                        "moves it down to the next lower lr measured safe there (default 2 where the target is longer "
                        f"than {probes_flag}, else 0; 0: off, and the output says \"not confirmed\")")
