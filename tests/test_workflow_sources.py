"""End to end: archive, Parquet, WebDataset and URL-list sources through the workflow, as image folders."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainset import manifest, schemas

from conftest import set_params, snakemake_images

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "ihc.png",
          "hubble_deep_field.jpg", "coins.png", "brick.png", "grass.png"]


def _png(k: int) -> bytes:
    import skimage.data

    with Image.open(Path(skimage.data.__file__).parent / PHOTOS[k]) as im:
        im = im.convert("RGB").resize((300, 300))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("set/a.png", _png(0))
        z.writestr("set/a.txt", "1girl, smile")
        z.writestr("../escape.png", _png(1))  # refused: outside the folder
        z.writestr("/abs.png", _png(1))       # refused: absolute


def _parquet(path: Path) -> None:
    table = pa.table({
        "image": [{"bytes": _png(2), "path": "x.png"}, {"bytes": _png(3), "path": "y.png"}],
        "id": ["p1", "p2"], "tags": [["cat", "solo"], ["rocket"]], "rating": ["general", "general"],
    })
    pq.write_table(table, path)


def _webdataset(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for key, k in (("s1", 4), ("s2", 5)):
            for name, data in ((f"{key}.png", _png(k)), (f"{key}.json", json.dumps({"tags": ["motorcycle"], "rating": "general"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


class _Images(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        k = {"/one.png": 6, "/two.png": 7}.get(self.path)
        if k is None:
            self.send_error(404)
            return
        body = _png(k)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_archive_parquet_webdataset_and_url_sources_become_items(project: Path, tmp_path: Path, server: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    _zip(raw / "pack.zip")
    _parquet(raw / "hf.parquet")
    _webdataset(raw / "shard-000000.tar")
    (raw / "urls.csv").write_text(f"url,tags\n{server}/one.png,sunset\n{server}/two.png,sea\n{server}/missing.png,x\n")
    set_params(project, demo=False, sources=[
        {"name": "pack", "kind": "archive", "path": str(raw / "pack.zip"), "license": "CC0-1.0"},
        {"name": "hf", "kind": "parquet", "path": str(raw / "hf.parquet"), "license": "CC0-1.0"},
        {"name": "wds", "kind": "webdataset", "path": str(raw / "shard-000000.tar"), "license": "CC0-1.0"},
        {"name": "web", "kind": "url_list", "path": str(raw / "urls.csv"), "license": "CC0-1.0"},
    ], report__min_kept=1, network__enabled=True, network__allow=["127.0.0.1"], network__retries=0)
    snakemake_images(project)
    ingest = manifest.read(project / "data/manifests/ingest.parquet", schemas.INGEST).set_index("item_id")
    assert ingest["source"].value_counts().to_dict() == {"hf": 2, "wds": 2, "web": 2, "pack": 1}
    assert {"pack:set/a.png", "hf:p1.png", "hf:p2.png", "wds:s1.png", "wds:s2.png"} <= set(ingest.index)
    assert list(ingest.at["pack:set/a.png", "tags"]) == ["1girl", "smile"]
    assert list(ingest.at["hf:p1.png", "tags"]) == ["cat", "solo"]
    assert list(ingest.at["wds:s1.png", "tags"]) == ["motorcycle"]
    assert sorted(t for tags in ingest.loc[ingest["source"] == "web", "tags"] for t in tags) == ["sea", "sunset"]
    report = json.loads((project / "data/run/materialize-pack.json").read_text())
    assert {r["member"] for r in report["refused"]} == {"../escape.png", "/abs.png"}
    downloads = json.loads((project / "data/materialized/_downloads/web.json").read_text())
    assert downloads["counts"] == {"failed": 1, "ok": 2}
    assert not (tmp_path / "escape.png").exists() and not (project / "data/escape.png").exists()
    # nothing changed: nothing reruns, and nothing is fetched again
    proc = snakemake_images(project)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_url_list_without_networking_enabled_fails_saying_so(project: Path, tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("https://example.com/a.png\n")
    set_params(project, demo=False, sources=[{"name": "web", "kind": "url_list", "path": str(tmp_path / "urls.txt"), "license": "x"}])
    proc = snakemake_images(project, check=False)
    assert proc.returncode != 0
    assert "network" in (proc.stdout + proc.stderr).lower() and "enabled" in (proc.stdout + proc.stderr)
