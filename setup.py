"""Build hook: the workflow files (Snakefile, rules/, scripts/, params.yaml, dvc.yaml, takedown.txt)
are kept once, at the top of the repository, and a build copies them into the package as
``trainset/workflow/`` so ``trainset init`` finds them in an installed wheel. Everything else about
the package is in pyproject.toml; an editable install copies nothing (``trainset.workflow.root()``
then reads the checkout)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _workflow_module():
    spec = importlib.util.spec_from_file_location("_trainset_workflow", HERE / "src" / "trainset" / "workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class build_py_with_workflow(build_py):
    """build_py, then the workflow files copied into ``<build_lib>/trainset/workflow``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        workflow = _workflow_module()
        dest = Path(self.build_lib) / "trainset" / "workflow"
        if dest.exists():
            shutil.rmtree(dest)  # a stale copy from an earlier build keeps no removed file
        dest.mkdir(parents=True)
        for name in workflow.FILES:
            src = HERE / name
            if not src.exists():
                raise FileNotFoundError(f"{src}: a workflow file the package must carry is missing")
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(*workflow.IGNORE))
            else:
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": build_py_with_workflow})
