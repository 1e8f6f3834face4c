"""URL-list downloads against real HTTP(S) servers on loopback (allowlisted for the tests)."""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import json
import random
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

from trainset.config import ConfigError
from trainset.sources import fetch, url_list
from trainset.sources.fetch import Allowlist, NetworkDisabled, address_problem
from trainset.sources.url_list import Entry, ListError, Settings, download, read_list


def _png() -> bytes:
    rng = random.Random(7)
    img = Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
PNG_MD5 = hashlib.md5(PNG).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Routes that each play one server behaviour; every request is logged on the server."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.log.append((self.path, dict(self.headers), time.monotonic()))
            self.server.counts[self.path] = count = self.server.counts.get(self.path, 0) + 1
        route = getattr(self, "route_" + parts.path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            self.send_error(404)
            return
        route(query, count)

    def _send(self, status: int, body: bytes, ctype: str | None = "image/png", length: int | None = None,
              headers: dict | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _ranged(self, body: bytes) -> None:
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes="):
            start = int(wanted[6:].split("-")[0])
            self._send(206, body[start:], headers={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        else:
            self._send(200, body, headers={"Accept-Ranges": "bytes"})

    def route_img_png(self, q, n):
        self._send(200, PNG, headers={"ETag": '"v1"'})

    def route_range_png(self, q, n):
        self._ranged(PNG)

    def route_norange_png(self, q, n):
        self._send(200, PNG)

    def route_flaky_png(self, q, n):
        if n == 1:
            self._send(500, b"oops", "text/plain")
        else:
            self._send(200, PNG)

    def route_fail(self, q, n):
        self._send(500, b"down", "text/plain")

    def route_slow(self, q, n):
        time.sleep(1.0)
        self._send(200, PNG)

    def route_truncated(self, q, n):
        self._send(200, PNG[: len(PNG) // 2], length=len(PNG))

    def route_truncate_once_png(self, q, n):
        if n == 1:
            self._send(200, PNG[:5000], length=len(PNG), headers={"ETag": '"t1"'})
        else:
            self._ranged(PNG)

    def route_half_range_png(self, q, n):
        half = len(PNG) // 2
        start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0])
        end = half if start < half else len(PNG)
        self._send(206, PNG[start:end], headers={"Content-Range": f"bytes {start}-{end - 1}/{len(PNG)}"})

    def route_redirect(self, q, n):
        self.send_response(302)
        self.send_header("Location", q["to"])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_loop(self, q, n):
        self.route_redirect({"to": "/loop"}, n)

    def route_robots(self, q, n):
        self._send(200, PNG, headers={"X-Robots-Tag": q["tag"]})

    def route_html(self, q, n):
        self._send(200, b"<html></html>", "text/html; charset=utf-8")

    def route_notype(self, q, n):
        self._send(200, PNG, ctype=None)

    def route_big(self, q, n):
        self._send(200, b"\0" * 10_000)

    def route_stream_big(self, q, n):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(b"\0" * 20_000)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.log: list = []
        self.counts: dict = {}
        self.lock = threading.Lock()
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up on purpose (timeouts, refusals) are not errors here

    def requests_to(self, path: str) -> list:
        return [entry for entry in self.log if entry[0] == path]


def _serve(server: Server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server():
    srv = Server()
    _serve(srv)
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def settings(**over) -> Settings:
    params = {
        "enabled": True,
        "allow": ["127.0.0.1"],
        "retries": 2,
        "backoff": 0.01,
        "backoff_max": 0.05,
        "timeout": {"connect": 1, "read": 0.3},
        "per_host_rate": 0,
        "workers": 4,
    }
    params.update(over)
    return Settings.from_params(params)


def fetch_one(server, path, tmp_path, s=None, **entry) -> url_list.Result:
    [result] = download([Entry(server.base + path, **entry)], tmp_path / "out", s or settings())
    return result


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- lists


def test_read_txt_skips_comments_and_reports_bad_lines(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("# images\nhttp://a.example/1.png\n\n  https://b.example/2.jpg  \nhttp://bad example/x\n")
    entries, problems = read_list(path)
    assert [e.url for e in entries] == ["http://a.example/1.png", "https://b.example/2.jpg"]
    assert [e.line for e in entries] == [2, 4]
    assert [(p.line, "whitespace" in p.reason) for p in problems] == [(5, True)]
    assert str(problems[0]).startswith(f"{path}:5:")


def test_read_csv_keeps_metadata_and_checks_digests(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text(
        "URL,sha256,md5,filename,artist,license\n"
        f"http://a.example/1.png,{PNG_SHA256.upper()},,one.png,alice,CC-BY\n"
        "http://a.example/2.png,abc,,,bob,\n"
        ",,,,carol,\n"
        "http://a.example/3.png,,,,dave,CC0,extra\n"
        f"http://a.example/4.png,,{PNG_MD5},,,\n"
    )
    entries, problems = read_list(path)
    assert [e.url for e in entries] == ["http://a.example/1.png", "http://a.example/4.png"]
    first = entries[0]
    assert (first.sha256, first.filename, first.metadata) == (PNG_SHA256, "one.png", {"artist": "alice", "license": "CC-BY"})
    assert entries[1].md5 == PNG_MD5
    reasons = {p.line: p.reason for p in problems}
    assert set(reasons) == {3, 4, 5}
    assert "sha256" in reasons[3] and "no url" in reasons[4] and "fields" in reasons[5]


def test_read_jsonl_reports_bad_json_and_keeps_going(tmp_path):
    path = tmp_path / "urls.jsonl"
    path.write_text(
        json.dumps({"url": "http://a.example/1.png", "md5": PNG_MD5, "tags": ["cat", "dog"]}) + "\n"
        "{not json\n"
        "[1, 2]\n"
        + json.dumps({"url": "http://a.example/2.png", "filename": 5}) + "\n"
        + json.dumps({"url": "http://a.example/3.png"}) + "\n"
    )
    entries, problems = read_list(path)
    assert [e.url for e in entries] == ["http://a.example/1.png", "http://a.example/3.png"]
    assert entries[0].metadata == {"tags": ["cat", "dog"]} and entries[0].md5 == PNG_MD5
    assert [p.line for p in problems] == [2, 3, 4]


def test_read_tsv(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text("url\tcaption\nhttp://a.example/1.png\ta cat, sitting\n")
    entries, problems = read_list(path)
    assert problems == [] and entries[0].metadata == {"caption": "a cat, sitting"}


def test_whole_file_problems_raise(tmp_path):
    (tmp_path / "a.csv").write_text("link,sha256\nhttp://a.example/1.png,\n")
    (tmp_path / "a.xml").write_text("<urls/>")
    with pytest.raises(ListError, match="url"):
        read_list(tmp_path / "a.csv")
    with pytest.raises(ListError, match="format"):
        read_list(tmp_path / "a.xml")


# ---------------------------------------------------------------- settings and safety rules


def test_settings_defaults_and_validation():
    s = Settings.from_params({})
    assert not s.enabled and s.workers == 8 and s.retries == 3 and s.content_types == ("image/*",)
    assert s.max_bytes == 50_000_000 and s.respect_noai and s.timeouts == fetch.Timeouts(10, 30)
    assert Settings.from_params({"max_bytes": "2 MiB", "timeout": 5}).max_bytes == 2 * 2**20
    for bad in ({"workres": 2}, {"workers": 0}, {"retries": 1.5}, {"max_bytes": "lots"},
                {"enabled": "yes"}, {"allow": ["10.0.0.0/8 x"]}, {"timeout": {"connect": 1, "total": 3}}):
        with pytest.raises(ConfigError):
            Settings.from_params(bad)


@pytest.mark.parametrize("address, problem", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.1", "private"), ("192.168.1.20", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"), ("100.64.0.1", "not globally routable"),
    ("::ffff:127.0.0.1", "loopback"), ("2002:a00:1::", "private"), ("8.8.8.8", None), ("2606:4700::1111", None),
])
def test_address_problem(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_allowlist_entries():
    allow = Allowlist.parse(["10.1.0.0/16", "NAS.lan", "*.internal", "::1"])
    assert allow.ip_allowed(ipaddress.ip_address("10.1.2.3")) and not allow.ip_allowed(ipaddress.ip_address("10.2.0.1"))
    assert allow.ip_allowed(ipaddress.ip_address("::1"))
    assert allow.host_allowed("nas.lan") and allow.host_allowed("a.b.internal") and not allow.host_allowed("internal")


def test_backoff_grows_with_jitter_and_repeats():
    s = settings(backoff=1, backoff_max=100)
    first = [url_list.backoff_delay(k, random.Random(1), s) for k in (1, 2, 3, 4)]
    again = [url_list.backoff_delay(k, random.Random(1), s) for k in (1, 2, 3, 4)]
    assert first == again
    for k, delay in enumerate(first, 1):
        assert 0.5 * 2 ** (k - 1) <= delay <= 1.5 * 2 ** (k - 1)
    assert url_list.backoff_delay(9, random.Random(1), settings(backoff=1, backoff_max=3)) <= 4.5
    assert url_list.backoff_delay(1, random.Random(1), s, retry_after=7) == 7


def test_disabled_network_raises_before_any_request(server, tmp_path):
    with pytest.raises(NetworkDisabled, match="enabled: true"):
        download([Entry(server.base + "/img.png")], tmp_path, Settings.from_params({"allow": ["127.0.0.1"]}))
    assert server.log == []


def test_non_http_schemes_are_refused(tmp_path):
    urls = ["ftp://example.org/a.png", "file:///etc/passwd", "gopher://x/1", "http://user:pw@127.0.0.1/a.png", "http:///nohost"]
    results = download([Entry(u) for u in urls], tmp_path, settings())
    assert [r.status for r in results] == ["refused"] * len(urls)
    assert "only http and https" in results[0].reason and "credentials" in results[3].reason


def test_loopback_refused_without_allowlist(server, tmp_path):
    port = server.server_address[1]
    entries = [Entry(f"http://127.0.0.1:{port}/img.png"), Entry(f"http://localhost:{port}/img.png")]
    results = download(entries, tmp_path, settings(allow=[]))
    assert [r.status for r in results] == ["refused", "refused"]
    assert "loopback" in results[0].reason and "localhost resolves to" in results[1].reason
    assert server.log == []


def test_allowlisted_host_name_connects_to_checked_address(server, tmp_path):
    port = server.server_address[1]
    [result] = download([Entry(f"http://localhost:{port}/img.png")], tmp_path, settings(allow=["localhost"]))
    assert result.status == "ok", result.reason
    assert server.log[0][1]["Host"] == f"localhost:{port}"


# ---------------------------------------------------------------- downloads


def test_good_png_is_downloaded_verified_and_named_by_url(server, tmp_path):
    url = server.base + "/img.png"
    [result] = download([Entry(url, sha256=PNG_SHA256, md5=PNG_MD5)], tmp_path, settings())
    assert result.status == "ok", result.reason
    path = Path(result.path)
    assert path == tmp_path / (hashlib.sha1(url.encode()).hexdigest() + ".png")
    assert path.read_bytes() == PNG and result.sha256 == PNG_SHA256 and result.bytes == len(PNG)
    assert (result.content_type, result.http_status, result.attempts) == ("image/png", 200, 1)
    assert Image.open(path).size == (64, 64)
    assert visible(tmp_path) == [path.name]  # no .part or metadata left behind
    assert server.log[0][1]["User-Agent"] == "trainset-url-list/1"


def test_listed_filename_is_used_only_when_safe(server, tmp_path):
    entries = [Entry(server.base + "/img.png", filename="cat.png"),
               Entry(server.base + "/img.png?b", filename="../evil.png"),
               Entry(server.base + "/img.png?c", filename=".hidden.png")]
    results = download(entries, tmp_path / "out", settings())
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert Path(results[0].path) == tmp_path / "out" / "cat.png"
    for result in results[1:]:
        assert Path(result.path).parent == tmp_path / "out" and Path(result.path).name[:40].isalnum()
    assert not (tmp_path / "evil.png").exists()


def test_finished_file_is_not_downloaded_again(server, tmp_path):
    entry = Entry(server.base + "/img.png", sha256=PNG_SHA256)
    first = download([entry], tmp_path, settings())[0]
    second = download([entry], tmp_path, settings())[0]
    assert (first.status, second.status) == ("ok", "skipped_existing")
    assert (second.path, second.sha256, second.content_type) == (first.path, PNG_SHA256, "image/png")
    assert len(server.requests_to("/img.png")) == 1
    Path(first.path).write_bytes(b"corrupted")
    third = download([entry], tmp_path, settings())[0]
    assert third.status == "ok" and Path(third.path).read_bytes() == PNG


def test_server_error_is_retried(server, tmp_path):
    result = fetch_one(server, "/flaky.png", tmp_path)
    assert result.status == "ok" and result.attempts == 2


def test_permanent_server_error_fails_after_retries(server, tmp_path):
    result = fetch_one(server, "/fail", tmp_path)
    assert result.status == "failed" and result.http_status == 500
    assert "HTTP 500" in result.reason and "3 attempts" in result.reason
    assert len(server.requests_to("/fail")) == 3


def test_client_error_is_not_retried(server, tmp_path):
    result = fetch_one(server, "/missing.png", tmp_path)
    assert (result.status, result.http_status, result.attempts) == ("failed", 404, 1)


def test_slow_server_times_out(server, tmp_path):
    began = time.monotonic()
    result = fetch_one(server, "/slow", tmp_path, settings(retries=1))
    assert result.status == "failed" and "timed out" in result.reason
    assert time.monotonic() - began < 3


def test_truncated_body_fails_and_leaves_no_image(server, tmp_path):
    result = fetch_one(server, "/truncated", tmp_path)
    assert result.status == "failed" and "cut short" in result.reason
    assert not any(name.endswith(".png") for name in visible(tmp_path / "out"))


def test_truncated_body_is_continued_with_range(server, tmp_path):
    result = fetch_one(server, "/truncate-once.png", tmp_path)
    assert result.status == "ok", result.reason
    assert Path(result.path).read_bytes() == PNG and result.attempts == 2
    second = server.requests_to("/truncate-once.png")[1][1]
    assert second["Range"] == "bytes=5000-" and second["If-Range"] == '"t1"'


def test_partial_range_answer_is_completed(server, tmp_path):
    result = fetch_one(server, "/half-range.png", tmp_path)
    assert result.status == "ok" and Path(result.path).read_bytes() == PNG and result.attempts == 2
    assert server.requests_to("/half-range.png")[1][1]["Range"] == f"bytes={len(PNG) // 2}-"


def test_part_file_on_disk_is_resumed(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".resume.png.part").write_bytes(PNG[:1000])
    result = fetch_one(server, "/range.png", tmp_path, filename="resume.png", sha256=PNG_SHA256)
    assert result.status == "ok", result.reason
    assert result.http_status == 206 and (out / "resume.png").read_bytes() == PNG
    assert server.requests_to("/range.png")[0][1]["Range"] == "bytes=1000-"
    assert visible(out) == ["resume.png"]


def test_stale_part_failing_the_checksum_is_fetched_again_whole(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".stale.png.part").write_bytes(b"x" * 500)
    result = fetch_one(server, "/range.png?stale", tmp_path, filename="stale.png", sha256=PNG_SHA256)
    assert result.status == "ok" and (out / "stale.png").read_bytes() == PNG
    ranges = [headers.get("Range") for _, headers, _ in server.requests_to("/range.png?stale")]
    assert ranges == ["bytes=500-", None]


def test_part_file_is_restarted_when_range_is_ignored(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".again.png.part").write_bytes(b"garbage that must not survive")
    result = fetch_one(server, "/norange.png", tmp_path, filename="again.png")
    assert result.status == "ok" and result.http_status == 200
    assert (out / "again.png").read_bytes() == PNG
    assert server.requests_to("/norange.png")[0][1]["Range"] == "bytes=29-"


def test_redirects_to_refused_addresses(server, tmp_path):
    for target, word in (("http://169.254.169.254/latest/meta-data/", "link-local"), ("http://10.0.0.1/x.png", "private")):
        result = fetch_one(server, f"/redirect?to={target}", tmp_path)
        assert result.status == "refused" and word in result.reason and target in result.reason


def test_redirect_to_allowed_path(server, tmp_path):
    result = fetch_one(server, "/redirect?to=/img.png", tmp_path)
    assert result.status == "ok" and Path(result.path).read_bytes() == PNG
    assert len(server.requests_to("/img.png")) == 1
    spaced = fetch_one(server, "/redirect?to=" + quote("/img.png?a b"), tmp_path)
    assert spaced.status == "ok" and len(server.requests_to("/img.png?a%20b")) == 1


def test_redirect_loop_fails(server, tmp_path):
    result = fetch_one(server, "/loop", tmp_path)
    assert result.status == "failed" and "more than 5 redirects" in result.reason
    assert len(server.requests_to("/loop")) == 6


@pytest.mark.parametrize("tag, status", [
    ("noai", "opted_out"), ("otherbot: noimageai", "opted_out"), ("noindex, noai", "opted_out"),
    ("noindex", "ok"), ("none", "ok"),
])
def test_x_robots_tag_opt_out(server, tmp_path, tag, status):
    result = fetch_one(server, f"/robots?tag={quote(tag)}", tmp_path)
    assert result.status == status, result.reason
    if status == "opted_out":
        assert visible(tmp_path / "out") == [] and "X-Robots-Tag" in result.reason


def test_opt_out_can_be_turned_off(server, tmp_path):
    assert fetch_one(server, "/robots?tag=noai", tmp_path, settings(respect_noai=False)).status == "ok"


def test_wrong_or_missing_content_type(server, tmp_path):
    html = fetch_one(server, "/html", tmp_path)
    missing = fetch_one(server, "/notype", tmp_path)
    assert (html.status, missing.status) == ("wrong_type", "wrong_type")
    assert "text/html" in html.reason and "none given" in missing.reason
    assert visible(tmp_path / "out") == []
    assert fetch_one(server, "/html", tmp_path, settings(content_types=["image/*", "text/html"])).status == "ok"


def test_too_large_by_header_and_while_streaming(server, tmp_path):
    by_header = fetch_one(server, "/big", tmp_path, settings(max_bytes=5000))
    streamed = fetch_one(server, "/stream-big", tmp_path, settings(max_bytes=5000))
    assert (by_header.status, streamed.status) == ("too_large", "too_large")
    assert "10000 bytes" in by_header.reason and "limit" in streamed.reason
    assert visible(tmp_path / "out") == []


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    result = fetch_one(server, "/img.png", tmp_path, sha256="0" * 64)
    md5 = fetch_one(server, "/img.png?md5", tmp_path, md5="f" * 32)
    assert (result.status, md5.status) == ("checksum_mismatch", "checksum_mismatch")
    assert PNG_SHA256 in result.reason and "md5" in md5.reason
    assert visible(tmp_path / "out") == []


def test_per_host_rate_limit_is_shared_by_workers(server, tmp_path):
    entries = [Entry(f"{server.base}/img.png?n={i}") for i in range(6)]
    results = download(entries, tmp_path, settings(per_host_rate=5, workers=6))
    assert [r.status for r in results] == ["ok"] * 6
    times = sorted(t for _, _, t in server.log)
    assert times[-1] - times[0] >= 0.75  # 6 requests at 5/s need 1 s; the margin absorbs scheduling
    assert all(sum(1 for t in times if start <= t < start + 0.3) <= 4 for start in times)


def test_duplicates_fetch_once_and_clashing_names_fail(server, tmp_path):
    entries = [Entry(server.base + "/img.png", file="l.txt", line=1), Entry(server.base + "/img.png", file="l.txt", line=2),
               Entry(server.base + "/range.png", filename="x.png", file="l.txt", line=3),
               Entry(server.base + "/norange.png", filename="X.png", file="l.txt", line=4)]
    results = download(entries, tmp_path, settings())
    assert [r.status for r in results] == ["ok", "ok", "ok", "failed"]
    assert "same URL as l.txt:1" in results[1].reason and "l.txt:3" in results[3].reason
    assert results[1].entry is entries[1]
    assert len(server.requests_to("/img.png")) == 1


def test_every_entry_gets_one_result_whatever_fails(server, tmp_path):
    paths = ["/img.png", "/fail", "/html", "/missing", "/redirect?to=http://10.0.0.1/", "/range.png", "/truncated"]
    entries = [Entry(server.base + p, metadata={"i": i}) for i, p in enumerate(paths)] + [Entry("ftp://x/y")]
    results = download(entries, tmp_path, settings(retries=1, workers=3))
    assert [r.url for r in results] == [e.url for e in entries]
    assert [r.status for r in results] == ["ok", "failed", "wrong_type", "failed", "refused", "ok", "failed", "refused"]
    assert all(set(r.as_dict()) >= {"url", "status", "reason", "path", "sha256", "metadata"} for r in results)
    assert results[2].as_dict()["metadata"] == {"i": 2}


# ---------------------------------------------------------------- HTTPS: the name is checked, the address pinned


@pytest.fixture
def tls_server(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    srv = Server(tls=context)
    _serve(srv)
    srv.port, srv.ca_file = srv.server_address[1], str(cert_file)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_https_checks_the_certificate_for_the_name(tls_server, tmp_path):
    s = settings(allow=["localhost", "127.0.0.1"], ca_file=tls_server.ca_file)
    good = Entry(f"https://localhost:{tls_server.port}/img.png")
    wrong_name = Entry(f"https://127.0.0.1:{tls_server.port}/img.png?ip")
    results = download([good, wrong_name], tmp_path, s)
    assert results[0].status == "ok" and Path(results[0].path).read_bytes() == PNG
    assert results[1].status == "failed" and "certificate" in results[1].reason
    untrusted = download([Entry(good.url + "?x")], tmp_path, settings(allow=["localhost"]))[0]
    assert untrusted.status == "failed" and "certificate" in untrusted.reason
