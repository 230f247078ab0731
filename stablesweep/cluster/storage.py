"""The storage every trial's node shares, and where a run's own files go.

On a Ray cluster of more than one node the trials run in workers on other machines and write
their checkpoints to Tune's storage themselves: `--out` must be the same storage for every node, a
bucket URI or a path declared shared with `--shared-storage` (`check_shared_storage`). Where
`--out` is a URI, only Tune's experiment goes there; the run's own files (sqlite stores, the
region, the ramp's tables) are written on the driver's disk under `--local-dir`
(`storage_paths`).
"""
from __future__ import annotations

import re
from pathlib import Path

from stablesweep.vocab import InputError

LOCAL_SCHEMES = {"file", "local"}  # URIs that name this machine's disk, not shared storage
DEFAULT_LOCAL = "runs/sweeps"  # --local-dir of a sweep where --out is a URI (a ramp passes its own)
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def uri_scheme(out: str) -> str | None:
    """The scheme of a URI (`s3` of s3://bucket/x), or None for a plain path."""
    m = _URI.match(str(out))
    return m.group(1).lower() if m else None


def is_shared_uri(out: str) -> bool:
    """A URI of storage every node reaches by itself (s3://, gs://, abfs://, hdfs://, ...); not
    file:// or local://, which name each machine's own disk."""
    scheme = uri_scheme(out)
    return scheme is not None and scheme not in LOCAL_SCHEMES


def storage_paths(out: str, local_dir: str | None = None,
                  default_local: str = DEFAULT_LOCAL) -> tuple[Path, str]:
    """(the directory for the run's own files, Tune's storage_path).

    A plain --out is both (the one-machine layout). A URI --out is Tune's storage only; the run's
    own files go to --local-dir (default `default_local`) on the driver."""
    if uri_scheme(out) is None:
        if local_dir is not None:
            raise InputError(f"--local-dir {local_dir}: only with a URI --out (s3://..., gs://...); with a path "
                             f"--out ({out}) its files are written there")
        path = Path(out).expanduser().resolve()
        return path, str(path)
    storage = str(out).rstrip("/")
    if uri_scheme(out) in LOCAL_SCHEMES and not storage.split("://", 1)[1].strip("/"):
        raise InputError(f"--out {out}: a URI needs a path after the scheme")
    return Path(local_dir or default_local).expanduser().resolve(), storage


def check_shared_storage(out: str, n_nodes: int, declared: bool) -> None:
    """Refuse a plain local --out on a cluster of more than one node (see the module docstring).

    `n_nodes`: the nodes trials may run on (alive nodes, plus those an autoscaler may add);
    `declared`: the user said the path is the same storage on every node (--shared-storage)."""
    if n_nodes <= 1 or declared or is_shared_uri(out):
        return
    kind = "a file:// URI of each machine's own disk" if uri_scheme(out) else "a plain local path"
    raise InputError(
        f"--out {out}: {kind}, but the Ray cluster has {n_nodes} nodes (alive, or that its autoscaler may add). "
        "Trials run on worker nodes and write "
        "their checkpoints to --out themselves, so each node would write its own copy on its own disk: the "
        "driver would not see the trials' files, and a trial retried on another node (after its node is lost) "
        "or continued by --resume could not be restored from its checkpoint. Use shared storage: an NFS (or "
        "other network) path mounted at the same place on every node, declared with --shared-storage (e.g. "
        "--out /mnt/shared/sweeps --shared-storage), or a bucket URI (e.g. --out s3://my-bucket/sweeps, the "
        "sweep's own files then go to --local-dir on this machine).")
