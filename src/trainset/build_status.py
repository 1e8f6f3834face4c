"""``trainset status``: what a build would redo, and why.

Snakemake's own plan for the default target (the same DAG and reasons ``snakemake --dry-run``
prints, through its Python API), grouped per rule, with each rule's changed params named. Snakemake
stops at the first reason it finds (a job whose input is rebuilt upstream is not also checked for
params), so the params, code and input-set checks are run on every job that would run and has
outputs to compare: a changed ``caption`` setting is named on ``caption`` even when the whole build
reruns for another reason. In a DVC repository ``dvc status`` follows: the stages whose
dependencies, params or outputs changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tools

#: Reason kinds, in the order they are shown, and how each reads.
REASONS = {
    "forced": "forced",
    "always": "always runs (no input or no output)",
    "missing_output": "output missing",
    "incomplete_output": "output incomplete (an interrupted run)",
    "trainset_code_changed": "trainset code changed",
    "source_files_changed": "source files changed",
    "params_changed": "params changed",
    "code_changed": "rule script changed",
    "input_set_changed": "set of input files changed",
    "updated_input": "input newer than output",
    "software_env_changed": "software environment changed",
    "upstream": "input rebuilt upstream",
    "queue_open": "an input queue is still open",
    "other": "Snakemake says",
}
#: What a reason means, said once under the table when it appears.
NOTES = {
    "trainset_code_changed": "trainset code changed: the package is not the one that made these outputs (an upgrade "
                             "or an edit); where DVC does not track src/trainset (trainset init), `dvc repro -f` rebuilds",
    "source_files_changed": "source files changed: files were added, removed or modified in a source folder",
    "updated_input": "input newer than output: a file was modified (or touched) after the outputs were made",
}
#: Params whose change means more than "a setting": every rule's ``code`` is the package digest
#: (provenance.code_digest), ingest's ``fingerprints`` the listing of the user's source folders.
PARAM_REASONS = {"code": "trainset_code_changed", "fingerprints": "source_files_changed"}
SHOWN_FILES = 3


@dataclass
class RulePlan:
    rule: str
    jobs: int = 0
    reasons: dict[str, set[str]] = field(default_factory=dict)  # kind -> details (files, param names)

    def add(self, kind: str, details=()) -> None:
        self.reasons.setdefault(kind, set()).update(str(d) for d in details)

    def as_dict(self) -> dict[str, Any]:
        order = list(REASONS)
        return {"rule": self.rule, "jobs": self.jobs,
                "reasons": {k: sorted(self.reasons[k]) for k in sorted(self.reasons, key=order.index)}}


def _param_names(job, change, persistence) -> list[str]:
    """The names of ``job``'s params whose values are new since the outputs were made."""
    serialize = getattr(persistence, "_serialize_param", repr)
    names = []
    for name, value in job.params.items():
        try:
            if serialize(value) in change.only_new:
                names.append(name)
        except Exception:  # noqa: BLE001 - a value Snakemake itself cannot represent is not recorded either
            continue
    return names


def _job_reasons(job, dag, workflow) -> RulePlan:
    """One job's reasons: Snakemake's, plus the provenance checks it skipped."""
    plan = RulePlan(job.rule.name)
    reason, persistence = dag.reason(job), workflow.persistence
    if reason.forced:
        plan.add("forced")
    if reason.noio or reason.nooutput:
        plan.add("always")
    if reason.missing_output:
        plan.add("missing_output", reason.missing_output)
    if reason.incomplete_output:
        plan.add("incomplete_output", reason.incomplete_output)
    upstream = set(reason.updated_input_run)
    if upstream:
        plan.add("upstream", upstream)
    if set(reason.updated_input) - upstream:
        plan.add("updated_input", set(reason.updated_input) - upstream)
    if reason.unfinished_queue_input:
        plan.add("queue_open")
    if not reason.missing_output and persistence.has_metadata(job):  # else nothing recorded to compare with
        _provenance_reasons(plan, job, reason, workflow)
    if not plan.reasons:  # a reason this list does not know: Snakemake's own words
        plan.add("other", [str(reason)])
    return plan


def _provenance_reasons(plan: RulePlan, job, reason, workflow) -> None:
    """Params (by name), input set, code and software changes since the outputs were made."""
    persistence = workflow.persistence
    change = persistence.params_changed(job)
    if change:
        names = _param_names(job, change, persistence)
        for name in names:
            plan.add(PARAM_REASONS.get(name, "params_changed"), () if name in PARAM_REASONS else [name])
        if not names:
            plan.add("params_changed", ["(a param removed)"])
    if any(persistence.input_changed(job)):
        plan.add("input_set_changed")
    if reason.code_changed or any(persistence.code_changed(job)) or _script_newer(job, workflow):
        plan.add("code_changed")
    if any(persistence.software_stack_changed(job)):
        plan.add("software_env_changed")


def _script_newer(job, workflow) -> bool:
    async def older():
        async for _ in job.outputs_older_than_script_or_notebook():
            return True
        return False

    try:
        return bool(workflow.async_run(older()))
    except Exception:  # noqa: BLE001 - a check Snakemake did not need; never fatal here
        return False


def snakemake_plan(root: str | Path, targets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """What ``snakemake --dry-run`` would run for ``targets`` (default: the Snakefile's first rule),
    per rule in DAG order: ``{"target", "jobs", "rules": [{rule, jobs, reasons}]}``."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings

    root = Path(root).resolve()
    settings = OutputSettings(quiet={Quietness.ALL}, enable_file_logging=False)
    with SnakemakeApi(settings) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=root / "Snakefile", workdir=root)
        workflow_api.dag(DAGSettings(targets=frozenset(targets)))
        # the steps of Snakemake's own summary/list-changes (Snakemake 9): a DAG built, nothing run
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=False, ignore_incomplete=False, lock_warn_only=True)
        workflow._build_dag()
        dag = workflow.dag
        plans: dict[str, RulePlan] = {}
        for level in dag.toposorted():
            for job in sorted(level, key=lambda j: j.rule.name):
                if not dag.needrun(job) or dag.finished(job) or not job.output:
                    continue  # a target rule without outputs (all) is no work of its own
                one = _job_reasons(job, dag, workflow)
                plan = plans.setdefault(one.rule, RulePlan(one.rule))
                plan.jobs += 1
                for kind, details in one.reasons.items():
                    plan.add(kind, details)
        target = ", ".join(targets) if targets else (workflow.default_target or "(none)")
    rules = [p.as_dict() for p in plans.values()]
    return {"target": target, "jobs": sum(r["jobs"] for r in rules), "rules": rules}


def dvc_plan(root: str | Path) -> dict[str, Any] | None:
    """``dvc status`` as ``{"stages": {stage: [change, ...]}}`` (``None`` outside a DVC repository)."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        return None
    proc = tools.run(tools.dvc("status", "--json"), root, timeout=300)
    if proc.returncode:
        return {"error": tools.last_line(proc), "stages": {}}
    try:
        raw = json.loads(proc.stdout.strip() or "{}")
    except json.JSONDecodeError:
        return {"error": f"dvc status --json printed no JSON: {proc.stdout.strip()[:200]}", "stages": {}}
    stages = {}
    for stage, changes in raw.items():
        items = []
        for change in changes:
            if isinstance(change, str):  # "always changed", "changed checksum"
                items.append(change)
                continue
            for kind, paths in change.items():
                what = {"changed deps": "dep", "changed outs": "out"}.get(kind, kind)
                for path, state in (paths.items() if isinstance(paths, dict) else [(paths, "")]):
                    if isinstance(state, dict):  # a params file: param -> state
                        items += [f"param {name} {how} ({path})" for name, how in state.items()]
                    else:
                        items.append(f"{what} {path} {state}".strip())
        stages[stage] = items
    return {"stages": stages}


def status(root: str | Path = ".", targets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    root = Path(root)
    out: dict[str, Any] = {"root": str(root.resolve())}
    try:
        out["snakemake"] = snakemake_plan(root, targets)
    except Exception as exc:  # noqa: BLE001 - a Snakefile or params error: say it, go on to DVC
        out["snakemake"] = {"error": f"{type(exc).__name__}: {exc}".strip()}
    out["dvc"] = dvc_plan(root)
    return out


def _files(details: list[str]) -> str:
    shown = ", ".join(details[:SHOWN_FILES])
    return f"{shown} and {len(details) - SHOWN_FILES} more" if len(details) > SHOWN_FILES else shown


def _reason_text(kind: str, details: list[str]) -> str:
    text = REASONS.get(kind, kind)
    if kind == "other":
        return "; ".join(details) or text
    if details and kind == "params_changed":
        return f"{text}: {', '.join(details)}"
    if details and kind in ("missing_output", "incomplete_output", "updated_input"):
        return f"{text} ({_files(details)})"
    return text


def format_status(result: dict[str, Any]) -> str:
    lines = []
    snake = result["snakemake"]
    if "error" in snake:
        lines.append(f"Snakemake: cannot plan the build: {snake['error']}")
    elif not snake["rules"]:
        lines.append(f"Snakemake: nothing to do (target {snake['target']}: every output is up to date)")
    else:
        lines.append(f"Snakemake: {snake['jobs']} job(s) in {len(snake['rules'])} rule(s) would run (target {snake['target']})")
        width = max(len(r["rule"]) for r in snake["rules"])
        for rule in snake["rules"]:
            why = "; ".join(_reason_text(k, d) for k, d in rule["reasons"].items()) or "(no reason given)"
            jobs = f"{rule['jobs']} job{'s' if rule['jobs'] != 1 else ''}"
            lines.append(f"  {rule['rule']:<{width}}  {jobs:>7}  {why}")
        seen = {kind for rule in snake["rules"] for kind in rule["reasons"]}
        lines += [f"  ({note})" for kind, note in NOTES.items() if kind in seen]
    dvc = result.get("dvc")
    if dvc is not None:
        if dvc.get("error"):
            lines.append(f"DVC: dvc status failed: {dvc['error']}")
        elif not dvc["stages"]:
            lines.append("DVC: data and pipelines are up to date")
        else:
            lines.append(f"DVC: {len(dvc['stages'])} stage(s) changed (dvc repro would run them)")
            for stage, items in dvc["stages"].items():
                lines.append(f"  {stage}: {'; '.join(items) or 'changed'}")
    return "\n".join(lines)


def exit_code(result: dict[str, Any]) -> int:
    """0 whatever would rebuild; 1 when the plan could not be made."""
    dvc = result.get("dvc") or {}
    return 1 if "error" in result["snakemake"] or dvc.get("error") else 0
