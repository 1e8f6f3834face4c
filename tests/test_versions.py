"""trainset purge and trainset diff on real git + DVC repositories built in tmp dirs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import run, tool_env
from trainset import cli, manifest, schemas, versions

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is needed")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for key, value in tool_env().items():
        if key.startswith(("GIT_", "DVC_")) or key == "PATH":
            monkeypatch.setenv(key, value)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def export_row(i: int, **over) -> dict:
    row = {
        "item_id": f"demo:{i:03d}", "sha256": sha(f"content {i}"), "source": "demo", "license": "CC0",
        "split": "train", "subset": "demo", "repeats": 1, "export_path": f"kohya/1_demo/img{i}_{sha(f'content {i}')[:8]}.png",
        "export_sha256": sha(f"exported {i}"), "export_format": "PNG", "conversion": None, "caption": f"caption {i}",
        "width": 8, "height": 8, "rating": "general", "tags": ["a", "b"], "generated": False,
        "cluster_id": f"{i:016x}", "nsfw_flag": False, "flags": [], "schema_version": 1,
    }
    row.update(over)
    return row


def rejected_row(i: int, **over) -> dict:
    row = {
        "item_id": f"demo:{i:03d}", "sha256": sha(f"content {i}"), "source": "demo", "path": f"data/raw/demo/{i}.png",
        "stage": "filter", "rule": "blocklist", "reason": "blocked tag", "detail": "", "triggered_tags": [],
        "duplicate_of": None, "nsfw_flag": False, "schema_version": 1,
    }
    row.update(over)
    return row


def write_version(root: Path, exports: list[dict], rejected: list[dict]) -> None:
    export_dir = root / "data" / "export"
    if export_dir.exists():
        shutil.rmtree(export_dir)
    for row in exports:
        image = export_dir / row["export_path"]
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(f"image {row['item_id']} {row['sha256']}".encode())
        image.with_suffix(".txt").write_text(row["caption"] + "\n")
    manifest.write(pd.DataFrame(exports), export_dir / "manifest.parquet", schemas.EXPORT)
    manifest.write(pd.DataFrame(rejected) if rejected else manifest.empty(schemas.REJECTED),
                   root / "data" / "manifests" / "rejected.parquet", schemas.REJECTED)


def commit(root: Path, tag: str) -> None:
    run(["dvc", "add", "data/export", "data/manifests"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", tag], root)
    run(["git", "tag", tag], root)


def init_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q", "-b", "main"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.autostage", "false"], root)
    return root


def test_diff_between_tags(tmp_path, capsys):
    root = init_repo(tmp_path / "repo")
    write_version(root, [export_row(1), export_row(2), export_row(3), export_row(4)], [rejected_row(9), rejected_row(8)])
    commit(root, "v1")
    write_version(
        root,
        [export_row(1, caption="a new caption"), export_row(2, split="val", export_path="val/demo/img2.png"),
         export_row(4, export_sha256=sha("re-exported 4")), export_row(5)],
        [rejected_row(8, stage="policy", rule="takedown", reason="content taken down"), rejected_row(3)],
    )
    commit(root, "v2")

    assert cli.main(["diff", "v1", "v2", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "1 added, 1 removed, 1 changed content" in text
    assert "a new caption" in text and "demo:005" in text

    assert cli.main(["diff", "v1", "v2", "--root", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    export = result["export"]
    assert export["added"] == ["demo:005"]
    assert export["removed"] == ["demo:003"]
    assert [c["id"] for c in export["changed"]] == ["demo:004"]
    assert export["changed"][0]["fields"] == ["export_sha256"]
    assert export["caption_changes"] == [{"id": "demo:001", "old": "caption 1", "new": "a new caption"}]
    assert export["split_changes"] == [{"id": "demo:002", "old": "train", "new": "val"}]
    rejected = result["rejected"]
    assert [r["id"] for r in rejected["newly_excluded"]] == ["demo:003"]
    assert [r["id"] for r in rejected["newly_allowed"]] == ["demo:009"]
    assert rejected["changed"] == [{"id": "demo:008",
                                    "old": {"stage": "filter", "rule": "blocklist", "reason": "blocked tag"},
                                    "new": {"stage": "policy", "rule": "takedown", "reason": "content taken down"}}]
    assert result["conversations"] is None

    # the workspace against a tag, and a tag against itself
    assert versions.diff(root, "v2", None)["export"]["added"] == []
    same = versions.diff(root, "v1", "v1")
    assert not any(same["export"][k] for k in ("added", "removed", "changed", "caption_changes"))


def test_diff_conversations(tmp_path):
    root = init_repo(tmp_path / "repo")
    conv = root / "data" / "conversations"
    conv.mkdir(parents=True)

    def conversations(rows):
        pd.DataFrame(rows).to_parquet(conv / "split.parquet", index=False)

    conversations([{"id": "c:1", "sha256": sha("c1"), "split": "train", "stage": "sft"},
                   {"id": "c:2", "sha256": sha("c2"), "split": "eval", "stage": "sft"}])
    run(["dvc", "add", "data/conversations"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "v1"], root)
    run(["git", "tag", "v1"], root)
    conversations([{"id": "c:1", "sha256": sha("c1 edited"), "split": "train", "stage": "dpo"},
                   {"id": "c:3", "sha256": sha("c3"), "split": "train", "stage": "sft"}])
    run(["dvc", "add", "data/conversations"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "v2"], root)
    run(["git", "tag", "v2"], root)

    result = versions.diff(root, "v1", "v2")
    assert result["export"] is None
    c = result["conversations"]
    assert c["added"] == ["c:3"] and c["removed"] == ["c:2"]
    assert [x["id"] for x in c["changed"]] == ["c:1"]
    assert c["stage_changes"] == [{"id": "c:1", "old": "sft", "new": "dpo"}]
    assert "conversations (data/conversations/split.parquet): 1 added, 1 removed" in versions.format_diff(result)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_purge_removes_the_item_and_lists_objects(tmp_path, capsys):
    root = init_repo(tmp_path / "repo")
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], root)
    rows = [export_row(1), export_row(2)]
    write_version(root, rows, [])
    export_dir = root / "data" / "export"
    (export_dir / "dataset_config.toml").write_text(
        "# header\n[general]\ncaption_extension = \".txt\"\nkeep_tokens = 0\n\n[[datasets]]\nresolution = 1024\n\n"
        f"[[datasets.subsets]]\nimage_dir = \"{(root / 'data/export/kohya/1_demo').as_posix()}\"\nnum_repeats = 1\n")
    raw = root / "data" / "raw" / "demo" / "1.png"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"raw bytes of item 1")
    ingest_rows = pd.DataFrame([{"item_id": "demo:001", "sha256": rows[0]["sha256"], "path": "data/raw/demo/1.png"}])
    (root / "data" / "manifests").mkdir(parents=True, exist_ok=True)
    ingest_rows.to_parquet(root / "data" / "manifests" / "ingest.parquet", index=False)
    commit(root, "v1")
    run(["dvc", "push", "-q"], root)

    image = export_dir / rows[0]["export_path"]
    caption = image.with_suffix(".txt")
    pushed = {md5(image), md5(caption)}  # data/raw is not DVC-tracked here
    expected = pushed | {md5(raw)}
    assert (root / ".dvc" / "cache" / versions.object_key(md5(image))).exists()

    target = rows[0]["sha256"]
    assert cli.main(["purge", target, "--reason", "DMCA 123", "--root", str(root)]) == 0
    out = capsys.readouterr().out

    assert not image.exists() and not caption.exists()
    assert (export_dir / rows[1]["export_path"]).exists()
    left = manifest.read(export_dir / "manifest.parquet", schemas.EXPORT)
    assert list(left["item_id"]) == ["demo:002"]
    assert raw.exists()  # kept without --delete-raw; the takedown list drops it from builds
    assert versions.takedown_set(root) == {target}
    assert "DMCA 123" in (root / "takedown.txt").read_text()

    for m in expected:
        key = versions.object_key(m)
        assert key in out
        assert f"rm -f {storage.as_posix()}/{key}" in out
        assert not (root / ".dvc" / "cache" / key).exists()  # the local cache copy is gone
    for m in pushed:
        assert (storage / versions.object_key(m)).exists()  # the remote is only listed, never touched
    assert "v1:data/export/" in out  # the tagged version still references it

    # the dataset config still names the folder, which still holds item 2
    from trainset import kohya_config

    kohya_config.validate_file(export_dir / "dataset_config.toml")

    # a second purge of the same content: already listed, nothing more to remove
    result = versions.purge(root, [target.upper()], scan_tags=False)
    assert result.added_to_list == [] and result.rows_removed == []
    with pytest.raises(ValueError):
        versions.purge(root, ["not-a-sha"])


def test_takedown_list_and_rejections(tmp_path):
    assert versions.takedown_set(tmp_path) == set()
    a, b = sha("a"), sha("b")
    assert versions.add_to_takedown(tmp_path, [a, a.upper()], "why", today="2026-11-23") == [a]
    assert versions.add_to_takedown(tmp_path, [a, b]) == [b]
    assert versions.takedown_set(tmp_path) == {a, b}
    assert f"{a}  # 2026-11-23 why" in (tmp_path / "takedown.txt").read_text()
    items = pd.DataFrame({"item_id": ["x", "y"], "sha256": [a, sha("c")]})
    rej = versions.takedown_rejections(items, tmp_path)
    assert rej.to_dict("records") == [{"item_id": "x", "sha256": a, "stage": "policy", "rule": "takedown",
                                        "reason": "content taken down", "detail": "listed in takedown.txt"}]
    (tmp_path / "takedown.txt").write_text("nonsense\n")
    with pytest.raises(ValueError, match="takedown.txt:1"):
        versions.takedown_set(tmp_path)
