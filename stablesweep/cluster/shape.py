"""What trials can use of the Ray cluster this process is connected to: the alive nodes'
resources and the node types an autoscaler may add (`cluster_shape`), as plain data
(`ClusterShape`: how many trials of a size fit, on how many nodes).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class ClusterShape:
    """What trials can use: the alive nodes' resources and, where an autoscaler may add nodes,
    its node types as (resources, most nodes of that type). Plain data (tested without Ray)."""

    nodes: list[dict[str, float]]
    node_types: list[tuple[dict[str, float], int]] = field(default_factory=list)

    @staticmethod
    def fits(node: dict[str, float], need: dict[str, float]) -> int:
        """How many trials of `need` fit this node (a node type of unknown resources: any number)."""
        if not node:
            return 10 ** 6
        n = 10 ** 6
        for k, v in need.items():
            if v > 0:
                n = min(n, math.floor(node.get(k, 0) / v + 1e-9))
        return n

    def trial_fit(self, need: dict[str, float]) -> int:
        """Trials that fit at once: on the alive nodes, plus on the nodes an autoscaler may add."""
        now = sum(self.fits(n, need) for n in self.nodes if n)
        later = sum(min(self.fits(r, need), 10 ** 6) * m for r, m in self.node_types if m > 0)
        return min(now + later, 10 ** 6)

    @property
    def n_nodes(self) -> int:
        """Nodes that trials may run on: alive ones, plus the most an autoscaler may add."""
        return len(self.nodes) + sum(m for _, m in self.node_types if m > 0)


def cluster_shape(autoscaling: bool = True) -> ClusterShape:
    """The shape of the Ray cluster this process is connected to; with `autoscaling`, the node
    types its autoscaler may start too (a Ray this process started has none)."""
    import ray

    nodes = [_ray_names(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    return ClusterShape(nodes=nodes, node_types=autoscaler_node_types() if autoscaling else [])


def _ray_names(res: dict) -> dict[str, float]:
    """Ray's resource names (CPU, GPU) as tune.with_resources spells them (cpu, gpu)."""
    return {{"CPU": "cpu", "GPU": "gpu"}.get(k, k): float(v) for k, v in res.items()}


def autoscaler_node_types() -> list[tuple[dict[str, float], int]]:
    """The worker node types an autoscaler may start: from the cluster config in the GCS (autoscaler
    v2, KubeRay), else from the cluster launcher's bootstrap config on the head (`ray up`), where
    this driver runs for `ray job submit` and `ray submit`. Empty for a fixed cluster."""
    types: list[tuple[dict[str, float], int]] = []
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None:
            for g in config.node_group_configs:
                if g.max_count != 0:
                    types.append((_ray_names(dict(g.resources)), g.max_count if g.max_count > 0 else 10 ** 6))
            return types
    except Exception as e:  # an internal API: never fail a sweep over it
        logger.debug("no cluster config from the GCS: %s", e)
    path = Path(os.environ.get("STABLESWEEP_AUTOSCALING_CONFIG", "~/ray_bootstrap_config.yaml")).expanduser()
    try:
        import yaml

        config = yaml.safe_load(path.read_text()) if path.is_file() else None
        if not isinstance(config, dict):
            return types
        head = config.get("head_node_type")
        for name, t in (config.get("available_node_types") or {}).items():
            if name != head and int(t.get("max_workers", 0) or 0) > 0:
                types.append((_ray_names(t.get("resources") or {}), int(t["max_workers"])))
    except Exception as e:
        logger.debug("no autoscaling config at %s: %s", path, e)
    return types
