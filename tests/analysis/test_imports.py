"""What each analysis module pulls in when imported on its own (a fresh interpreter each): never
the sweep engine or Ray; MLflow only when asked for (tracking imports it lazily)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["answer", "answers_by_config", "recommended", "region", "importance", "plots", "text", "comparison", "render", "reading", "report", "boundary"]


@pytest.mark.parametrize("name", MODULES)
def test_an_analysis_module_imports_no_sweep_ray_or_mlflow(name):
    code = (f"import sys, json; import stablesweep.analysis.{name}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'torch') "
            "or m.startswith('stablesweep.sweep'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []


def test_every_analysis_module_is_listed():
    assert sorted(p.stem for p in (ROOT / "stablesweep" / "analysis").glob("*.py") if p.stem != "__init__") == \
        sorted(MODULES)
