"""The built wheel, installed (not editable) in a new environment, trains from an unrelated folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


#: The environment without PYTHONPATH: only what is installed counts.
ENV = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}, "PYTHONWARNINGS": "ignore"}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the sources (no build leftovers of the work tree can slip in)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "gptlab", src / "gptlab", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src), "-w", str(dist)], cwd=src)
    (wheel,) = dist.glob("gptlab-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_ships_every_config(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gptlab").rglob("*.yaml")}  # Hydra's, the harness tasks
    assert shipped and shipped <= names
    assert {"gptlab/conf/hydra/help/gptlab.yaml", "gptlab/harness/tasks/gptlab_verdict.yaml"} <= names


@pytest.mark.slow
def test_installed_wheel_trains_from_an_empty_folder(wheel: Path, tmp_path: Path):
    # A new environment without pip or the machine's site-packages; the wheel goes in without
    # its dependencies, which come from this test's environment through a path entry placed after
    # the environment's own site-packages (its .pth files, e.g. an editable gptlab, stay inactive).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path).stdout.strip())
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_outer_packages.pth").write_text("\n".join(outer) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        cwd=tmp_path)

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    where = run([str(python), "-c", "import importlib.util; print(importlib.util.find_spec('gptlab').origin)"],
                cwd=empty).stdout  # where `import gptlab` resolves, without importing torch
    assert Path(where.strip()).is_relative_to(site), where
    result = run([str(venv / "bin" / "gptlab-train"), "trainer.max_steps=3", "model=nano", "data.batch_size=4",
                  "trainer.limit_val_batches=1", "trainer.val_check_interval=3"], cwd=empty)
    (run_dir,) = (empty / "runs").glob("*/*")
    assert (run_dir / "config.yaml").is_file() and (run_dir / "model" / "model.safetensors").is_file()
    assert f"Run finished: {run_dir.relative_to(empty)}" in result.stdout
