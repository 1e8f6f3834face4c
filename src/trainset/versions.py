"""Dataset versions: takedowns (``trainset purge``) and what changed between two versions (``trainset diff``).

Takedown list: ``takedown.txt`` at the repository root, committed to git. One content SHA-256
(the source file's, as in every manifest's ``sha256`` column) per line, optionally followed by
``# date reason``; blank lines and ``#`` lines are comments. The filter stage rejects every
listed content (stage ``policy``, rule ``takedown``), so every future build drops it;
:func:`purge` also removes it from the current export at once and lists every content-addressed
DVC object (local cache, remote, older tagged versions) that still holds the bytes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tomli_w

from . import atomic, manifest, schemas

TAKEDOWN_FILE = "takedown.txt"
TAKEDOWN_STAGE, TAKEDOWN_RULE = "policy", "takedown"
EXPORT_DIR = "data/export"
EXPORT_MANIFEST = f"{EXPORT_DIR}/manifest.parquet"
INGEST_MANIFEST = "data/manifests/ingest.parquet"
REJECTED_MANIFEST = "data/manifests/rejected.parquet"
CONV_SPLIT = "data/conversations/split.parquet"
CONV_REJECTED = "data/conversations/rejected.parquet"
CONV_EXPORT_MANIFEST = "data/export-conversations/manifest.json"
_SHA = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- takedown list


def takedown_path(root: str | Path = ".") -> Path:
    return Path(root) / TAKEDOWN_FILE


def takedown_set(root: str | Path = ".") -> set[str]:
    """The content SHA-256s listed in ``<root>/takedown.txt`` (empty if there is no list).
    The filter stage rejects these with stage ``policy``, rule ``takedown``."""
    path = takedown_path(root)
    if not path.exists():
        return set()
    found = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        value = line.split("#", 1)[0].strip().lower()
        if not value:
            continue
        if not _SHA.match(value):
            raise ValueError(f"{path}:{number}: not a SHA-256: {value!r}")
        found.add(value)
    return found


def takedown_rejections(items: pd.DataFrame, root: str | Path = ".") -> pd.DataFrame:
    """The rows of ``items`` (any manifest with ``sha256``) whose content is taken down, as
    rejection fields (item_id, sha256, stage, rule, reason, detail) for the filter to record."""
    listed = takedown_set(root)
    hit = items[items["sha256"].isin(listed)]
    return pd.DataFrame({
        "item_id": hit["item_id"].astype(str), "sha256": hit["sha256"].astype(str),
        "stage": TAKEDOWN_STAGE, "rule": TAKEDOWN_RULE,
        "reason": "content taken down", "detail": f"listed in {TAKEDOWN_FILE}",
    })


def normalize_shas(shas) -> list[str]:
    out = []
    for sha in shas:
        value = str(sha).strip().lower()
        if not _SHA.match(value):
            raise ValueError(f"not a SHA-256 (64 hex digits): {sha!r}")
        if value not in out:
            out.append(value)
    return out


def add_to_takedown(root: str | Path, shas, reason: str = "", today: str | None = None) -> list[str]:
    """Append the SHA-256s not yet listed; returns those added."""
    shas = normalize_shas(shas)
    listed = takedown_set(root)
    new = [s for s in shas if s not in listed]
    if new:
        path = takedown_path(root)
        text = path.read_text(encoding="utf-8") if path.exists() else (
            "# Content taken down (trainset purge): the filter rejects these SHA-256s (stage policy, rule takedown).\n")
        if text and not text.endswith("\n"):
            text += "\n"
        stamp = today or _dt.date.today().isoformat()
        note = f"  # {stamp}" + (f" {reason}" if reason else "")
        text += "".join(f"{s}{note}\n" for s in new)
        atomic.write_text(path, text)
    return new


# --------------------------------------------------------------------------- DVC objects


def md5_file(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def object_key(md5: str) -> str:
    """Where DVC 3 stores a file's content, relative to a cache or remote root."""
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def _dvc_config(root: Path) -> tuple[Path, dict[str, str]]:
    """The local cache folder and the remotes (name -> url) DVC is configured with."""
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            cache = Path(repo.cache.local.path).parent.parent if repo.cache.local else root / ".dvc" / "cache"
            remotes = {name: str(conf.get("url", "")) for name, conf in repo.config.get("remote", {}).items()}
        return cache, remotes
    except Exception:  # not a DVC repository (or DVC missing): the default layout, no remotes
        return root / ".dvc" / "cache", {}


def remote_rm_command(url: str, md5: str) -> str:
    key = object_key(md5)
    target = f"{url.rstrip('/')}/{key}"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "s3":
        return f"aws s3 rm {target}"
    if scheme in ("gs", "gcs"):
        return f"gsutil rm {target}"
    if scheme == "azure":
        return f"az storage blob delete --blob-url {target}"
    if scheme == "ssh":
        host, _, path = url.split("://", 1)[1].partition("/")
        return f"ssh {host} rm /{path.rstrip('/')}/{key}"
    if scheme in ("hdfs", "webhdfs"):
        return f"hdfs dfs -rm {target}"
    if scheme in ("http", "https", "webdav", "webdavs"):
        return f"curl -X DELETE {target}"
    if not scheme:
        return f"rm -f {target}"
    return f"# delete {target}"


@dataclass
class Found:
    """One file holding taken-down content."""
    path: str  # relative to the repository root (or rev:path for an older version)
    md5: str
    sha256: str
    kind: str  # export | caption | raw | shard | tagged
    removed: bool = False


@dataclass
class PurgeResult:
    shas: list[str]
    added_to_list: list[str]
    rows_removed: list[str]  # item ids
    files: list[Found] = field(default_factory=list)
    cache_objects: list[str] = field(default_factory=list)
    cache_removed: list[str] = field(default_factory=list)
    remotes: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def md5s(self) -> list[str]:
        return sorted({f.md5 for f in self.files})

    def remote_commands(self) -> list[str]:
        return [remote_rm_command(url, md5) for url in self.remotes.values() for md5 in self.md5s]


def _read_lenient(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _fix_kohya_config(export_dir: Path, notes: list[str]) -> None:
    """Drop subsets whose folder no longer holds an image (the config stays valid for sd-scripts)."""
    path = export_dir / "dataset_config.toml"
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    changed = False
    for dataset in doc.get("datasets", []):
        keep = []
        for subset in dataset.get("subsets", []):
            folder = Path(subset.get("image_dir", ""))
            name = folder.name
            local = next((p for p in (export_dir / "kohya" / name, export_dir / "originals" / "kohya" / name) if p.is_dir()), None)
            if local is None or any(p.is_file() and p.suffix.lower() not in (".txt", ".caption", ".json") for p in local.iterdir()):
                keep.append(subset)
            else:
                changed = True
                notes.append(f"dataset_config.toml: dropped subset {name} (no image left)")
        dataset["subsets"] = keep
    if changed:
        from . import kohya_config

        kohya_config.validate(doc, str(path))
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        atomic.write_text(path, header + tomli_w.dumps(doc))


def purge(root: str | Path, shas, reason: str = "", delete_raw: bool = False, delete_cache: bool = True,
          scan_tags: bool = True, today: str | None = None) -> PurgeResult:
    """Take down contents by SHA-256: list them in ``takedown.txt``, remove their exported files
    (image, caption sidecar, originals/ copies) and manifest rows from ``data/export`` now, remove
    their local DVC cache objects, and list every DVC object (md5) that still holds them."""
    root = Path(root)
    shas = normalize_shas(shas)
    wanted = set(shas)
    added = add_to_takedown(root, shas, reason, today)
    result = PurgeResult(shas=shas, added_to_list=added, rows_removed=[])
    export_dir = root / EXPORT_DIR
    mpath = export_dir / "manifest.parquet"
    if mpath.exists():
        export = manifest.read(mpath, schemas.EXPORT)
        hit = export["sha256"].isin(wanted) | export["export_sha256"].isin(wanted)
        for row in export[hit].itertuples(index=False):
            image = export_dir / row.export_path
            candidates = [image, *(p for p in image.parent.glob(f"{image.stem}.*") if p != image)]
            originals = export_dir / "originals" / row.export_path
            candidates += [originals, *(p for p in originals.parent.glob(f"{originals.stem}.*") if p != originals)]
            for path in dict.fromkeys(candidates):
                if path.is_file():
                    kind = "export" if path.suffix == image.suffix else "caption"
                    result.files.append(Found(path.relative_to(root).as_posix(), md5_file(path), row.sha256, kind, True))
                    path.unlink()
            result.rows_removed.append(row.item_id)
        if hit.any():
            kept = export[~hit]
            manifest.write(kept if len(kept) else manifest.empty(schemas.EXPORT), mpath, schemas.EXPORT)
            from .stages.export import attribution

            if (export_dir / "ATTRIBUTION.md").exists():
                atomic.write_text(export_dir / "ATTRIBUTION.md", attribution(kept))
            _fix_kohya_config(export_dir, result.notes)
            _rebuild_shards(root, export_dir, kept, result)
    ingest = _read_lenient(root / INGEST_MANIFEST)
    if ingest is not None:
        for row in ingest[ingest["sha256"].isin(wanted)].itertuples(index=False):
            raw = Path(row.path) if Path(row.path).is_absolute() else root / row.path
            if raw.is_file():
                rel = raw.relative_to(root).as_posix() if raw.is_relative_to(root) else str(raw)
                result.files.append(Found(rel, md5_file(raw), row.sha256, "raw", delete_raw))
                if delete_raw:
                    raw.unlink()
        if not delete_raw and len(ingest[ingest["sha256"].isin(wanted)]):
            result.notes.append("raw source files kept (pass --delete-raw to delete them; the takedown list drops them from every build)")
    if scan_tags:
        _scan_tags(root, wanted, result)
    cache, result.remotes = _dvc_config(root)
    for md5 in result.md5s:
        obj = cache / object_key(md5)
        result.cache_objects.append(obj.as_posix())
        if delete_cache and obj.exists():
            obj.chmod(0o644)
            obj.unlink()
            result.cache_removed.append(obj.as_posix())
    return result


def _rebuild_shards(root: Path, export_dir: Path, kept: pd.DataFrame, result: PurgeResult) -> None:
    """WebDataset / Hugging Face Parquet files hold the images too: list them, then rebuild them."""
    from . import export_formats

    present = [d for d in (export_formats.WEBDATASET_DIR, export_formats.HF_DIR) if (export_dir / d).is_dir()]
    if not present:
        return
    for d in present:
        for path in sorted((export_dir / d).rglob("*")):
            if path.is_file():
                result.files.append(Found(path.relative_to(root).as_posix(), md5_file(path), "", "shard", True))
    params: dict = {}
    try:
        import yaml

        params = dict((yaml.safe_load((root / "params.yaml").read_text()) or {}).get("export") or {})
    except OSError:
        pass
    params.setdefault("webdataset", {}).setdefault("enabled", export_formats.WEBDATASET_DIR in present)
    params.setdefault("hf_parquet", {}).setdefault("enabled", export_formats.HF_DIR in present)
    import shutil

    for d in present:
        shutil.rmtree(export_dir / d)
    export_formats.write(kept, export_dir, params)
    result.notes.append(f"rebuilt {', '.join(present)} without the taken-down items")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _scan_tags(root: Path, wanted: set[str], result: PurgeResult) -> None:
    """Older tagged versions whose export still lists the content: the md5 of each such file there."""
    try:
        tags = _git(root, "tag", "--list").split()
    except (OSError, subprocess.CalledProcessError):
        return
    if not tags:
        return
    from dvc.fs import DVCFileSystem

    seen = {f.md5 for f in result.files}
    for tag in tags:
        try:
            fs = DVCFileSystem(repo=str(root), rev=tag)
            with fs.open(EXPORT_MANIFEST, "rb") as f:
                old = pd.read_parquet(io.BytesIO(f.read()))
        except Exception:
            continue
        rows = old[old["sha256"].isin(wanted) | old.get("export_sha256", old["sha256"]).isin(wanted)]
        for row in rows.itertuples(index=False):
            image = f"{EXPORT_DIR}/{row.export_path}"
            stem = image.rsplit(".", 1)[0]
            for path in (image, f"{stem}.txt"):
                try:
                    md5 = _md5_in(fs, path)
                except Exception:
                    continue
                if md5:
                    result.files.append(Found(f"{tag}:{path}", md5, row.sha256, "tagged", md5 in seen))
                    seen.add(md5)


def _md5_in(fs, path: str) -> str | None:
    info = fs.info(path)
    dvc_info = info.get("dvc_info") or {}
    md5 = dvc_info.get("md5") or info.get("md5")
    return str(md5).removesuffix(".dir") if md5 else None


def format_purge(result: PurgeResult) -> str:
    lines = [f"takedown.txt: {len(result.added_to_list)} added, {len(result.shas) - len(result.added_to_list)} already listed"]
    lines.append(f"export rows removed: {len(result.rows_removed)}" + (f" ({', '.join(result.rows_removed)})" if result.rows_removed else ""))
    for f in result.files:
        state = "deleted" if f.removed else "kept"
        lines.append(f"  {f.kind:8} {state:7} md5 {f.md5}  {f.path}")
    lines += [f"note: {n}" for n in result.notes]
    lines.append("DVC objects holding the content:")
    for md5 in result.md5s:
        lines.append(f"  {object_key(md5)}")
    for obj in result.cache_removed:
        lines.append(f"  removed from local cache: {obj}")
    if result.remotes:
        lines.append("Delete them from the remote(s):")
        lines += [f"  {c}" for c in result.remote_commands()]
    else:
        lines.append("No DVC remote configured: delete these keys from any copy of the cache (files/md5/...).")
    lines.append("Older git tags still reference these md5s; after deleting, `dvc pull` of those versions misses only these files.")
    lines.append("Commit takedown.txt and the updated export (dvc commit / dvc push) so every future build drops them.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- diff


def read_at(root: str | Path, path: str, rev: str | None) -> bytes | None:
    """A DVC- (or git-) tracked file's bytes at a revision; None if it does not exist there."""
    import dvc.api

    try:
        with dvc.api.open(path, repo=str(root), rev=rev, mode="rb") as f:
            return f.read()
    except Exception as exc:  # PathMissingError, FileNotFoundError, missing cache...
        if isinstance(exc, (FileNotFoundError,)) or type(exc).__name__ in ("PathMissingError", "OutputNotFoundError"):
            return None
        raise


def _frame(data: bytes | None) -> pd.DataFrame | None:
    return None if data is None else pd.read_parquet(io.BytesIO(data))


def _keyed(df: pd.DataFrame | None, key: str) -> dict[str, dict]:
    if df is None:
        return {}
    return {str(r[key]): r for r in df.to_dict("records")}


def _eq(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    try:
        return bool(a == b) if not hasattr(a, "__len__") or isinstance(a, str) else list(a) == list(b)
    except Exception:
        return str(a) == str(b)


def _compare_items(old: dict[str, dict], new: dict[str, dict], content: tuple[str, ...], fields: tuple[str, ...]) -> dict:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed, field_changes = [], {f: [] for f in fields}
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        diffs = [c for c in content if c in a and c in b and not _eq(a[c], b[c])]
        if diffs:
            changed.append({"id": key, "fields": diffs, **{f"old_{c}": a[c] for c in diffs}, **{f"new_{c}": b[c] for c in diffs}})
        for f in fields:
            if f in a and f in b and not _eq(a[f], b[f]):
                field_changes[f].append({"id": key, "old": a[f], "new": b[f]})
    return {"added": added, "removed": removed, "changed": changed, **{f"{f}_changes": v for f, v in field_changes.items()}}


def _compare_rejections(old: dict[str, dict], new: dict[str, dict]) -> dict:
    fields = ("stage", "rule", "reason")
    pick = lambda r: {f: (None if r.get(f) is None else str(r.get(f))) for f in fields}  # noqa: E731
    return {
        "newly_excluded": [{"id": k, **pick(new[k])} for k in sorted(set(new) - set(old))],
        "newly_allowed": [{"id": k, **pick(old[k])} for k in sorted(set(old) - set(new))],
        "changed": [{"id": k, "old": pick(old[k]), "new": pick(new[k])}
                    for k in sorted(set(old) & set(new)) if pick(old[k]) != pick(new[k])],
    }


def diff(root: str | Path, rev1: str, rev2: str | None) -> dict:
    """What changed between two versions (git revisions; ``rev2`` None: the workspace), read from
    the manifests DVC holds for each: exported items (added, removed, changed content, caption and
    split changes), rejections (newly excluded, newly allowed, changed stage/rule/reason), and the
    conversations (split manifest, rejections and the export's files) where present."""
    root = Path(root)
    at = lambda path, rev: read_at(root, path, rev)  # noqa: E731
    out: dict = {"rev1": rev1, "rev2": rev2 or "workspace"}
    e1, e2 = _frame(at(EXPORT_MANIFEST, rev1)), _frame(at(EXPORT_MANIFEST, rev2))
    out["export"] = None if e1 is None and e2 is None else _compare_items(
        _keyed(e1, "item_id"), _keyed(e2, "item_id"), ("sha256", "export_sha256"), ("caption", "split", "rating", "tags"))
    r1, r2 = _frame(at(REJECTED_MANIFEST, rev1)), _frame(at(REJECTED_MANIFEST, rev2))
    out["rejected"] = None if r1 is None and r2 is None else _compare_rejections(_keyed(r1, "item_id"), _keyed(r2, "item_id"))
    c1, c2 = _frame(at(CONV_SPLIT, rev1)), _frame(at(CONV_SPLIT, rev2))
    out["conversations"] = None if c1 is None and c2 is None else _compare_items(
        _keyed(c1, "id"), _keyed(c2, "id"), ("sha256",), ("split", "stage"))
    q1, q2 = _frame(at(CONV_REJECTED, rev1)), _frame(at(CONV_REJECTED, rev2))
    out["conversations_rejected"] = None if q1 is None and q2 is None else _compare_rejections(_keyed(q1, "id"), _keyed(q2, "id"))
    m1, m2 = at(CONV_EXPORT_MANIFEST, rev1), at(CONV_EXPORT_MANIFEST, rev2)
    if m1 is None and m2 is None:
        out["conversation_export"] = None
    else:
        import json

        f1 = (json.loads(m1) if m1 else {}).get("files", {})
        f2 = (json.loads(m2) if m2 else {}).get("files", {})
        out["conversation_export"] = {
            "added": sorted(set(f2) - set(f1)), "removed": sorted(set(f1) - set(f2)),
            "changed": sorted(k for k in set(f1) & set(f2) if f1[k] != f2[k]),
        }
    return out


def _short(value, width: int = 60) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_diff(result: dict) -> str:
    lines = [f"trainset diff {result['rev1']} {result['rev2']}"]

    def items(title: str, part: dict | None, fields: tuple[str, ...]) -> None:
        lines.append("")
        if part is None:
            lines.append(f"{title}: not present in either version")
            return
        lines.append(f"{title}: {len(part['added'])} added, {len(part['removed'])} removed, {len(part['changed'])} changed content"
                     + "".join(f", {len(part[f'{f}_changes'])} {f} changes" for f in fields))
        rows = [("added", k, "") for k in part["added"]] + [("removed", k, "") for k in part["removed"]]
        rows += [("changed", c["id"], ", ".join(c["fields"])) for c in part["changed"]]
        for f in fields:
            rows += [(f, c["id"], f"{_short(c['old'], 40)} -> {_short(c['new'], 40)}") for c in part[f"{f}_changes"]]
        if rows:
            w = max(len(r[1]) for r in rows)
            lines.append(f"  {'change':10} {'id':{w}}  detail")
            lines.extend([f"  {a:10} {b:{w}}  {c}" for a, b, c in rows])

    def rejections(title: str, part: dict | None) -> None:
        lines.append("")
        if part is None:
            lines.append(f"{title}: not present in either version")
            return
        lines.append(f"{title}: {len(part['newly_excluded'])} newly excluded, {len(part['newly_allowed'])} newly allowed, "
                     f"{len(part['changed'])} changed")
        fmt = lambda r: f"{r['stage']}/{r['rule']}: {_short(r['reason'], 50)}"  # noqa: E731
        rows = [("excluded", r["id"], fmt(r)) for r in part["newly_excluded"]]
        rows += [("allowed", r["id"], f"was {fmt(r)}") for r in part["newly_allowed"]]
        rows += [("changed", r["id"], f"{fmt(r['old'])} -> {fmt(r['new'])}") for r in part["changed"]]
        if rows:
            w = max(len(r[1]) for r in rows)
            lines.append(f"  {'change':10} {'id':{w}}  detail")
            lines.extend([f"  {a:10} {b:{w}}  {c}" for a, b, c in rows])

    items("images (data/export/manifest.parquet)", result["export"], ("caption", "split", "rating", "tags"))
    rejections("policy (data/manifests/rejected.parquet)", result["rejected"])
    if result.get("conversations") is not None:
        items("conversations (data/conversations/split.parquet)", result["conversations"], ("split", "stage"))
    if result.get("conversations_rejected") is not None:
        rejections("conversation rejections (data/conversations/rejected.parquet)", result["conversations_rejected"])
    ce = result.get("conversation_export")
    if ce is not None:
        lines.extend(["", f"conversation export files: {len(ce['added'])} added, {len(ce['removed'])} removed, {len(ce['changed'])} changed"])
        lines.extend([f"  {k:8} {name}" for k in ("added", "removed", "changed") for name in ce[k]])
    return "\n".join(lines)
