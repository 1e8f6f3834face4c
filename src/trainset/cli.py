"""The ``trainset`` command: small tools around the workflow's files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, demo, manifest, schemas

# manifest file name -> schema, for files the workflow writes
SCHEMA_BY_NAME = {
    "ingest": schemas.INGEST,
    "unmatched_records": schemas.UNMATCHED,
    "audit": schemas.AUDIT,
    "nsfw_scores": schemas.NSFW_SCORES,
    "groups": schemas.GROUPS,
    "filtered": schemas.FILTERED,
    "deduped": schemas.DEDUPED,
    "captioned": schemas.CAPTIONED,
    "split": schemas.SPLIT,
    "split_moves": schemas.MOVES,
    "pairs": schemas.PAIRS,
    "reference_pairs": schemas.REFERENCE_PAIRS,
    "clusters": schemas.MEMBERSHIP,
    "rejected": schemas.REJECTED,
    "filter": schemas.REJECTED,
    "dedup": schemas.REJECTED,
    "manifest": schemas.EXPORT,
}


# the conversation manifests (under data/conversations/), by name; read/<source> are CONVERSATIONS
CONVERSATION_SCHEMA_BY_NAME = {
    "conversations": schemas.CONVERSATIONS,
    "conversation_scores": schemas.CONVERSATION_SCORES,
    "conversations_kept": schemas.CONVERSATIONS_KEPT,
    "conversations_split": schemas.CONVERSATIONS_SPLIT,
    "conversation_stages": schemas.CONVERSATION_STAGES,
    "conversations_rejected": schemas.CONVERSATIONS_REJECTED,
}
_CONVERSATION_FILES = {"scores": "conversation_scores", "filtered": "conversations_kept", "deduped": "conversations_kept",
                       "split": "conversations_split", "stages": "conversation_stages", "rejected": "conversations_rejected",
                       "filter": "conversations_rejected", "dedup": "conversations_rejected", "curriculum": "conversations_rejected"}


def _conversation_key(path: Path) -> str | None:
    """The conversation schema a file under data/conversations/ follows, from its place there."""
    parts = path.resolve().parts
    if "conversations" not in parts:
        return None
    if path.parent.name == "read":
        return "conversations_rejected" if path.name.endswith(".rejected.parquet") else "conversations"
    return _CONVERSATION_FILES.get(path.stem)


def _schema_for(path: Path, name: str | None):
    if name in CONVERSATION_SCHEMA_BY_NAME:
        return CONVERSATION_SCHEMA_BY_NAME[name]
    conversation = None if name else _conversation_key(path)
    if conversation:
        return CONVERSATION_SCHEMA_BY_NAME[conversation]
    key = name or path.stem
    if key not in SCHEMA_BY_NAME:
        raise SystemExit(f"{path}: cannot tell which schema applies; pass --schema ({', '.join(sorted(SCHEMA_BY_NAME) + sorted(CONVERSATION_SCHEMA_BY_NAME))})")
    return SCHEMA_BY_NAME[key]


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for raw in args.paths:
        path = Path(raw)
        try:
            df = manifest.read(path, _schema_for(path, args.schema))
        except manifest.ManifestError as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            print(f"{path}: ok ({len(df)} rows)")
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    truth = demo.materialize(args.dest)
    print(f"{args.dest}: {len(truth['images'])} demo files")
    return 0


def cmd_kohya_check(args: argparse.Namespace) -> int:
    from . import kohya_config

    status = 0
    for raw in args.paths:
        try:
            config = kohya_config.validate_file(raw)
        except (kohya_config.KohyaConfigError, OSError) as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            subsets = sum(len(d.get("subsets", [])) for d in config.get("datasets", []))
            print(f"{raw}: ok ({len(config.get('datasets', []))} datasets, {subsets} subsets)")
    return status


def cmd_purge(args: argparse.Namespace) -> int:
    from . import versions

    try:
        result = versions.purge(args.root, args.sha256, reason=args.reason, delete_raw=args.delete_raw,
                                delete_cache=not args.keep_cache, scan_tags=not args.no_tags)
    except (ValueError, manifest.ManifestError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(versions.format_purge(result))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    import json

    from . import versions

    result = versions.diff(args.root, args.rev1, args.rev2)
    print(json.dumps(result, indent=2, default=str) if args.json else versions.format_diff(result))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from . import repo_init

    try:
        result = repo_init.init(args.dir, demo=args.demo, sources=args.source, license=args.license,
                                force=args.force, commit=args.commit)
    except repo_init.InitError as exc:
        print(f"trainset init: {exc}", file=sys.stderr)
        return 1
    print(repo_init.format_result(result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from . import build_status

    result = build_status.status(args.root, args.targets)
    print(json.dumps(result, indent=2) if args.json else build_status.format_status(result))
    return build_status.exit_code(result)


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from . import doctor

    checks = doctor.run(args.root, remote_timeout=args.remote_timeout)
    print(json.dumps(doctor.as_json(checks), indent=2) if args.json else doctor.format_table(checks))
    return doctor.exit_code(checks)


def cmd_report(args: argparse.Namespace) -> int:
    import json
    import webbrowser

    from . import tools, workflow

    root = args.root.resolve()
    if not args.no_build:
        cores = str(args.cores) if args.cores else "all"
        proc = tools.run(tools.snakemake("--cores", cores, "--quiet", "rules", "--", *workflow.REPORT_TARGETS), root)
        if proc.returncode != 0:
            print(proc.stdout[-4000:] + proc.stderr[-8000:], file=sys.stderr)
            print(f"trainset report: the build failed in {root} ({tools.last_line(proc)})", file=sys.stderr)
            return 1
    index = root / workflow.HTML_INDEX
    if not index.is_file():
        print(f"trainset report: {index} does not exist; build it (trainset report without --no-build)", file=sys.stderr)
        return 1
    for name, label in (("metrics.json", "images"), ("conversations-metrics.json", "conversations")):
        path = root / "data" / "report" / name
        if path.is_file():
            go = json.loads(path.read_text(encoding="utf-8")).get("go")
            print(f"{label}: {'nothing to decide' if go is None else 'GO' if go else 'NO-GO'}")
    print(f"report: {index}")
    if args.open and not webbrowser.open(index.as_uri()):
        print("trainset report: no browser could be started; open the file above", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainset", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trainset {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check manifests against their schemas")
    p.add_argument("paths", nargs="+")
    p.add_argument("--schema", choices=sorted(SCHEMA_BY_NAME) + sorted(CONVERSATION_SCHEMA_BY_NAME), help="schema name (default: from the file name and, under data/conversations/, its place)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("kohya-check", help="check Kohya sd-scripts dataset configs (.toml) as sd-scripts checks them")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=cmd_kohya_check)
    p = sub.add_parser("demo", help="write the built-in demo source into a folder")
    p.add_argument("dest", type=Path)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("purge", help="take contents down by SHA-256: list them in takedown.txt, drop them from the export now, "
                                     "and print the DVC objects (cache, remote, older tags) that still hold them")
    p.add_argument("sha256", nargs="+", help="content SHA-256 (the manifests' sha256 column)")
    p.add_argument("--reason", default="", help="a note written beside each SHA-256 in takedown.txt")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    p.add_argument("--delete-raw", action="store_true", help="also delete the raw source files holding the content")
    p.add_argument("--keep-cache", action="store_true", help="leave the local DVC cache objects in place")
    p.add_argument("--no-tags", action="store_true", help="do not look through older git tags for the content")
    p.set_defaults(func=cmd_purge)
    p = sub.add_parser("diff", help="items added, removed and changed, caption and policy changes between two versions")
    p.add_argument("rev1", help="git revision (tag, branch, commit)")
    p.add_argument("rev2", nargs="?", default=None, help="git revision (default: the workspace)")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("init", help="a new data repository: the workflow files, git and DVC, files staged")
    p.add_argument("dir", type=Path, help="the folder to make (must be empty unless --force)")
    p.add_argument("--demo", action="store_true", help="keep the built-in demo images and conversations on")
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="an image folder source (repeatable); PATH relative to the current folder")
    p.add_argument("--license", default="unknown", help="the license written for the --source entries (default: unknown)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder (existing files are never overwritten)")
    p.add_argument("--commit", action="store_true", help="also commit (with your git identity)")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("status", help="what a build would redo and why (Snakemake's plan per rule, and dvc status)")
    p.add_argument("targets", nargs="*", help="Snakemake targets (default: the Snakefile's default target)")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("doctor", help="check Python, packages, GPU, the repository, params.yaml sources, DVC remotes and optional tools")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--remote-timeout", type=float, default=20.0, help="seconds to wait for each DVC remote (default: 20)")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("report", help="build the reports (Markdown, metrics, HTML) and print the GO/NO-GO; --open shows the HTML report")
    p.add_argument("--open", action="store_true", help="open data/report/html/index.html in the web browser")
    p.add_argument("--no-build", action="store_true", help="do not run Snakemake first: use the report as it is")
    p.add_argument("--cores", type=int, default=0, help="Snakemake cores (default: all)")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
