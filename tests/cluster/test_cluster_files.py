"""Every shipped cluster file passes Ray's own schema after the defaults `ray up` fills in."""
import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "cluster.yaml", ROOT / "configs" / "cluster_onprem.yaml"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cluster_file_is_valid_for_ray_up(path):
    raw = yaml.safe_load(path.read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating (no cloud call)
    validate_config(config)
    # the dashboard stays on the head's localhost
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    # setup installs stablesweep, and the project is mounted where setup looks for it
    assert any("stablesweep" in c and "pip install" in c for c in config["setup_commands"])
    assert "~/stablesweep" in config["file_mounts"]


def test_cloud_cluster_scales_gpu_workers_from_zero():
    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


def test_a_broken_cluster_file_is_refused_by_the_schema():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["max_wokers"] = 2  # a typo
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(raw))
