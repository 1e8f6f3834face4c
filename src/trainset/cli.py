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


def _schema_for(path: Path, name: str | None):
    key = name or path.stem
    if key not in SCHEMA_BY_NAME:
        raise SystemExit(f"{path}: cannot tell which schema applies; pass --schema ({', '.join(sorted(SCHEMA_BY_NAME))})")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainset", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trainset {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check manifests against their schemas")
    p.add_argument("paths", nargs="+")
    p.add_argument("--schema", choices=sorted(SCHEMA_BY_NAME), help="schema name (default: from the file name)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("kohya-check", help="check Kohya sd-scripts dataset configs (.toml) as sd-scripts checks them")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=cmd_kohya_check)
    p = sub.add_parser("demo", help="write the built-in demo source into a folder")
    p.add_argument("dest", type=Path)
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
