"""The data check imports no torch: `import stablesweep.data`, its public names, `data.discover`
(`stablesweep init`) and the check of bad data (manifests, folders, synthetic datasets; the API's
`build_data` and the CLI's sweep and ramp) end before torch is imported, so bad data is
refused at once (`train` checks its data in its Trainer, after torch). Each case runs in a fresh
interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_manifest, write_png

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "ray", "mlflow", "optuna")


def _heavy_after(code: str, *argv: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `code` in a fresh interpreter; what it printed last is the heavy packages imported by then."""
    code += ("\nimport sys, json\n"
             f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    return p, json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else ["(no output)"]


def test_importing_the_data_package_and_its_names_imports_no_torch():
    p, heavy = _heavy_after("import stablesweep.data\n"
                            "from stablesweep.data import build_data, validate_labels, DataError, ProblemKind, "
                            "LabelReport, SplitReport, Problem\n"
                            "from stablesweep.data.discover import discover\n"
                            "from stablesweep.data import manifests, check, cache, problems, synthetic\n"
                            "import stablesweep.commands.init\n")
    assert p.returncode == 0, p.stderr
    assert heavy == []


def test_a_name_that_needs_torch_imports_it_when_asked_for():
    p, heavy = _heavy_after("from stablesweep.data import LabelSpace, MultiData, DeviceInput, eval_subset\n"
                            "import stablesweep.data as d\n"
                            "assert d.LabelSpace is LabelSpace and 'build_data' in dir(d)\n"
                            "try:\n    d.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    assert p.returncode == 0, p.stderr
    assert "torch" in heavy and "has no attribute 'no_such_name'" in p.stdout


BAD_DATA = """
import json
from stablesweep.config import load_config
from stablesweep.data import DataError, build_data
try:
    build_data(load_config({config!r}))
except DataError as e:
    print(json.dumps([p.kind for p in e.report.problems] if e.report else [str(e)]))
"""


def _config(root: Path, datasets: str) -> Path:
    path = root / "config.yaml"
    path.write_text("training: {steps: 10, batch_size: 2}\nmodel: {name: small_cnn}\ndata: {image_size: 8}\n"
                    f"datasets:\n  dataset_configs:\n{datasets}")
    return path


def _bad_data(root: Path) -> dict[str, Path]:
    """A config for each kind of bad data: a label out of range, a missing image, a line without its
    label key, a missing manifest, a folder dataset with an image that is no image."""
    write_manifest(root, "range", [0, 1, 2, 1])
    write_manifest(root, "gone", [0, 1, 1, 0])
    (root / "img/gone/train/2.png").unlink()
    write_manifest(root, "nokey", [0, 1, 1, 0], raw_lines={3: '{"image": "img/nokey/train/2.png", "class": 1}'})
    for c in ("a", "b"):
        write_png(root / "folder" / c / "0.png")
    (root / "folder" / "b" / "1.png").write_text("not an image")
    found = {}
    for name, entry in [("range", "range_train.jsonl"), ("gone", "gone_train.jsonl"), ("nokey", "nokey_train.jsonl"),
                        ("nofile", "absent_train.jsonl"), ("folder", "folder")]:
        (root / name).mkdir(exist_ok=True)
        found[name] = _config(root / name, f"    d: {{num_classes: 2, train: ../{entry}}}\n")
    return found


@pytest.mark.parametrize("case, kind", [("range", "label_out_of_range"), ("gone", "missing_image"),
                                        ("nokey", "missing_key"), ("nofile", "missing_file"),
                                        ("folder", "unreadable_image")])
def test_bad_data_is_refused_before_torch_is_imported(tmp_path, case, kind):
    config = _bad_data(tmp_path)[case]
    p, heavy = _heavy_after(BAD_DATA.format(config=str(config)))
    assert p.returncode == 0, p.stderr
    assert kind in p.stdout, p.stdout
    assert heavy == [], f"{case}: imported {heavy} before refusing"


def test_checking_a_synthetic_dataset_imports_no_torch(tmp_path):
    config = _config(tmp_path, "    d: {num_classes: 3, source: synthetic, train_size: 6}\n")
    p, heavy = _heavy_after("from stablesweep.config import load_config\nfrom stablesweep.data import validate_labels\n"
                            f"print(validate_labels(load_config({str(config)!r})).ok())\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "True" and heavy == []


CLI = "import sys\nfrom stablesweep.cli import main\nprint('exit', main(sys.argv[1:]))"


@pytest.mark.parametrize("command", [["sweep", "--space", str(ROOT / "search_spaces" / "quick.yaml")], ["ramp"]])
def test_the_cli_refuses_bad_data_before_torch_is_imported(tmp_path, command):
    config = _bad_data(tmp_path)["range"]
    out = tmp_path / "out"
    p, heavy = _heavy_after(CLI, command[0], str(config), *command[1:], "--out", str(out))
    assert "exit 2" in p.stdout, p.stdout + p.stderr
    assert "range_train.jsonl:3: label 2 is outside [0, 2)" in p.stderr, p.stderr
    assert heavy == [], f"{command[0]}: imported {heavy} before refusing"
    assert not out.exists() or not any(out.iterdir())


PLAN = """
from stablesweep.cli import build_parser
from stablesweep.sweep.options import {opts}
from stablesweep.sweep.{module} import {plan}
{plan}({opts}.from_args(build_parser().parse_args({argv!r})))
"""


@pytest.mark.parametrize("kind", ["sweep", "ramp"])
def test_planning_a_sweep_or_ramp_on_good_data_imports_no_torch(tmp_path, kind):
    """The driver checks the data and counts its steps without torch (`data.check.preflight`): only the
    trial workers, which train, import it, and the driver's start does not wait for it."""
    config = _config(tmp_path, "    d: {num_classes: 3, source: synthetic, train_size: 12}\n")
    argv = [kind, str(config), "--out", str(tmp_path / "out")]
    if kind == "sweep":
        argv += ["--space", str(ROOT / "search_spaces" / "quick.yaml")]
    opts, module, plan = (("SweepOptions", "plan", "plan_sweep") if kind == "sweep"
                          else ("RampOptions", "ramp_runner", "plan_ramp"))
    p, heavy = _heavy_after(PLAN.format(opts=opts, module=module, plan=plan, argv=argv))
    assert p.returncode == 0, p.stderr
    assert "torch" not in heavy and "torchvision" not in heavy, heavy
