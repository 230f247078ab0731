"""`stablesweep cluster`: check a Ray cluster before a sweep runs on it; stop an on-prem one."""
from __future__ import annotations

import argparse

EPILOG = """\
examples:
  # the cluster file, before `ray up` (no cluster needed)
  stablesweep cluster check configs/cluster_onprem.yaml

  # the running cluster, from a driver on the head: every node, its GPUs, versions, token mode, --out
  ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
      stablesweep cluster check --address auto --out /mnt/shared/sweeps

  # this cluster's Ray on every machine of an on-prem cluster, and nothing else; then `ray down`
  stablesweep cluster stop configs/cluster_onprem.yaml

What `check` holds a cluster file to (docs/cluster.md says why): Ray's own schema; worker node
types of a cloud provider declare their CPUs and GPUs; every `ray start` runs the cluster's own Ray
by its path, with RAY_AUTH_MODE (and, for token, a token file that file_mounts puts on each node)
and a --temp-dir of the cluster's own (by which `stop` finds its processes); no `ray stop`; pip
installs into a venv by its path, of this machine's Ray version; the project is not mounted at
~/stablesweep; an on-prem head starts with --num-cpus=0 and autoscaler
v1; this shell holds the cluster's token. With --address it
joins the cluster and runs a task on every alive node: versions (Ray, Python, stablesweep), the
token mode, and whether the node sees a file the driver wrote under --out.
Exit status: 0 the cluster will serve a sweep; 1 `stop` failed on a machine; 2 a problem, each listed.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="check a Ray cluster (its file, or the running cluster) before a sweep; "
                                       "stop an on-prem cluster",
                       description="A Ray cluster as Ray's cluster launcher (`ray up`) makes it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    check = what.add_parser("check", help="what the cluster will give a sweep; an error for each mismatch",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file", nargs="?", metavar="CLUSTER_YAML", help="a cluster file of `ray up`, read without a cluster")
    check.add_argument("--address", metavar="ADDRESS",
                       help="join the running cluster there (auto: the one this machine belongs to, as on the head)")
    check.add_argument("--out", metavar="OUT",
                       help="with --address: the sweep's --out; every node must see the file the check writes there "
                            "(and removes; the directory is created if missing)")
    check.add_argument("--timeout", type=float, default=120.0, metavar="S",
                       help="with --address: seconds to wait for each node's answer (default 120)")
    check.set_defaults(func=run_check)
    stop = what.add_parser("stop", help="stop this cluster's Ray on every machine of an on-prem cluster (provider: "
                                        "local), over SSH; nothing else", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    stop.add_argument("file", metavar="CLUSTER_YAML")
    stop.set_defaults(func=run_stop)


def run_check(args: argparse.Namespace) -> int:
    from stablesweep.cluster.launcher import ClusterError, check_file, load_cluster_file
    from stablesweep.cluster.live import check_live

    if not args.file and not args.address:
        raise ClusterError("cluster check: give a CLUSTER_YAML, --address, or both")
    if args.out and not args.address:
        raise ClusterError("--out: only with --address (the nodes are asked whether they see it)")
    problems: list[str] = []
    if args.file:
        lines, found = check_file(load_cluster_file(args.file))
        print("\n".join(lines), flush=True)
        problems += found
    if args.address:
        lines, found = check_live(args.address, args.out, timeout=args.timeout)
        print("\n".join(lines), flush=True)
        problems += found
    if problems:
        raise ClusterError(f"{len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    print("ok: no problem found")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    import sys

    from stablesweep.cluster.launcher import load_cluster_file, stop_nodes

    failed = stop_nodes(load_cluster_file(args.file))
    for f in failed:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failed else 0
