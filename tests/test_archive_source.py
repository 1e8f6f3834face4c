"""trainset.sources.archive: unpacking untrusted zips and tars into the image_folder layout."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from trainset.sources import archive
from trainset.sources.archive import Limits, MemberRefused, member_path
from trainset.sources.image_folder import SourceError

SMALL = Limits(max_total_bytes=50 * 2**20, max_member_bytes=4 * 2**20, max_ratio=50, ratio_floor_bytes=64 * 1024, max_members=100)


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (seed % 256, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data) if data else None)


def _refused(report) -> dict[str, str]:
    return {r["member"]: r["reason"] for r in report.refused}


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != archive.MARKER)


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil.png", "climbs out"),
        ("a/../../x.png", "climbs out"),
        ("/abs.png", "absolute"),
        ("..\\evil.png", "climbs out"),
        ("C:\\Windows\\x.png", "drive letter"),
        ("c:x.png", "drive letter"),
        ("\\\\server\\share\\x.png", "absolute"),
        ("", "empty"),
        ("a\x00b.png", "NUL"),
        ("./", "target folder itself"),
    ],
)
def test_member_path_refuses(name, reason):
    with pytest.raises(MemberRefused, match=reason):
        member_path(name)


@pytest.mark.parametrize(
    "name, rel",
    [("a/b.png", "a/b.png"), ("./a//b.png", "a/b.png"), ("a/../b.png", "b.png"), ("dir\\sub\\c.png", "dir/sub/c.png")],
)
def test_member_path_normalises(name, rel):
    assert member_path(name) == rel


# --- zip ----------------------------------------------------------------------------------


def test_zip_good_and_evil_members(tmp_path):
    png = _png()
    src = _zip(
        tmp_path / "in.zip",
        {
            "good/a.png": png,
            "good/a.txt": b"red, blue",
            "../evil.png": png,
            "/abs.png": png,
            "a/../../x.png": png,
            "..\\win.png": png,
            "C:\\drive.png": png,
            "b.png": png,
        },
    )
    dest = tmp_path / "out"
    report = archive.extract(src, dest, SMALL)
    assert sorted(report.extracted) == ["b.png", "good/a.png", "good/a.txt"]
    assert _files(dest) == ["b.png", "good/a.png", "good/a.txt"]
    refused = _refused(report)
    assert set(refused) == {"../evil.png", "/abs.png", "a/../../x.png", "..\\win.png", "C:\\drive.png"}
    assert "absolute" in refused["/abs.png"] and "climbs out" in refused["../evil.png"]
    assert report.bytes == 2 * len(png) + len(b"red, blue")
    assert report.errors == []
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "x.png").exists()
    assert (dest / "good/a.png").read_bytes() == png


def test_zip_symlinks_and_devices_refused(tmp_path):
    path = tmp_path / "links.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, target in (("out", "../../etc/passwd"), ("in", "b.png")):
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
        fifo = zipfile.ZipInfo("pipe")
        fifo.create_system = 3
        fifo.external_attr = (0o010644 << 16)
        zf.writestr(fifo, b"")
        zf.writestr("b.png", _png())
    report = archive.extract(path, tmp_path / "out", SMALL)
    refused = _refused(report)
    assert report.extracted == ["b.png"]
    assert "outside the target" in refused["out"] and "symlink" in refused["out"]
    assert "inside the target" in refused["in"] and "never extracted" in refused["in"]
    assert "FIFO" in refused["pipe"]
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_duplicate_names_do_not_overwrite(tmp_path):
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", b"first")
        zf.writestr("a.png", b"second")
        zf.writestr("x/../a.png", b"third")
        zf.writestr("a.png/b.png", b"under a file")
    report = archive.extract(path, tmp_path / "out", SMALL)
    assert report.extracted == ["a.png"]
    assert (tmp_path / "out/a.png").read_bytes() == b"first"
    assert [r["reason"].split(" ")[0] for r in report.refused[:2]] == ["duplicate", "duplicate"]
    assert "clashes" in report.refused[2]["reason"]


def test_zip_bomb_ratio_and_sizes(tmp_path):
    path = _zip(
        tmp_path / "bomb.zip",
        {"zeros.bin": b"\0" * (2 * 2**20), "big.bin": os.urandom(5 * 2**20), "ok.png": _png()},
    )
    report = archive.extract(path, tmp_path / "out", SMALL)
    refused = _refused(report)
    assert report.extracted == ["ok.png"]
    assert "max_ratio" in refused["zeros.bin"] and "zip bomb" in refused["zeros.bin"]
    assert "max_member_bytes" in refused["big.bin"]


def test_zip_total_limit(tmp_path):
    members = {f"m{i}.bin": os.urandom(2**20) for i in range(5)}
    path = _zip(tmp_path / "many.zip", members, method=zipfile.ZIP_STORED)
    limits = Limits(max_total_bytes=3 * 2**20 + 10, max_member_bytes=2 * 2**20)
    report = archive.extract(path, tmp_path / "out", limits)
    assert report.extracted == ["m0.bin", "m1.bin", "m2.bin"]
    assert all("max_total_bytes" in r["reason"] for r in report.refused)
    assert report.bytes == 3 * 2**20


def _lie_about_size(path: Path, member: str, size: int) -> None:
    """Rewrite the central directory's uncompressed size of ``member`` (a lying header)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len].decode() == member:
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(member)


def test_zip_header_lying_about_size(tmp_path):
    path = _zip(tmp_path / "liar.zip", {"bomb.bin": b"\0" * (3 * 2**20), "ok.png": _png()})
    _lie_about_size(path, "bomb.bin", 1000)
    report = archive.extract(path, tmp_path / "out", Limits(max_ratio=10**9))
    assert report.extracted == ["ok.png"]
    assert "bomb.bin" in _refused(report)
    assert not (tmp_path / "out/bomb.bin").exists()


def test_overlapping_zip_entries_refused(tmp_path):
    path = _zip(tmp_path / "o.zip", {"a.bin": b"payload" * 10})
    data = bytearray(path.read_bytes())
    cd = data.find(b"PK\x01\x02")
    eocd = data.find(b"PK\x05\x06")
    entry = bytes(data[cd:eocd])
    twin = entry.replace(b"a.bin", b"b.bin")
    count = struct.pack("<H", 2)
    tail = bytearray(data[eocd:])
    tail[8:10] = count
    tail[10:12] = count
    tail[12:16] = struct.pack("<I", len(entry) * 2)
    path.write_bytes(bytes(data[:cd]) + entry + twin + bytes(tail))
    report = archive.extract(path, tmp_path / "out", SMALL)
    assert report.extracted == ["a.bin"]
    assert "overlaps" in _refused(report)["b.bin"]


def test_corrupt_zip_member_keeps_the_others(tmp_path):
    payload = os.urandom(4000)
    path = _zip(tmp_path / "c.zip", {"a.png": _png(1), "bad.bin": payload, "z.png": _png(2)}, method=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    at = data.find(payload[:64])
    data[at + 100 : at + 110] = b"\xff" * 10
    path.write_bytes(bytes(data))
    report = archive.extract(path, tmp_path / "out", SMALL)
    assert report.extracted == ["a.png", "z.png"]
    assert "unreadable" in _refused(report)["bad.bin"]


def test_truncated_zip_keeps_what_came_before(tmp_path):
    tail = os.urandom(5000)
    path = _zip(tmp_path / "t.zip", {"a.png": _png(), "../evil.png": _png(1), "b.bin": tail, "c.png": _png(2)})
    data = path.read_bytes()
    path.write_bytes(data[: data.find(tail) + 2000])
    report = archive.extract(path, tmp_path / "out", SMALL)
    assert report.errors and "truncated" in report.errors[0]
    assert report.extracted == ["a.png"]
    refused = _refused(report)
    assert "climbs out" in refused["../evil.png"] and "unreadable" in refused["b.bin"]
    assert _files(tmp_path / "out") == ["a.png"]


def test_member_count_limit(tmp_path):
    path = _zip(tmp_path / "n.zip", {f"{i}.txt": b"x" for i in range(10)})
    report = archive.extract(path, tmp_path / "out", Limits(max_members=4))
    assert len(report.extracted) == 4
    assert "max_members" in report.errors[0]


# --- tar ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")])
def test_tar_links_traversal_and_specials(tmp_path, mode, suffix):
    path = tmp_path / f"in{suffix}"
    png = _png()
    with tarfile.open(path, mode) as tf:
        _tar_add(tf, "dir", type=tarfile.DIRTYPE)
        _tar_add(tf, "dir/a.png", png)
        _tar_add(tf, "../evil.png", png)
        _tar_add(tf, "/abs.png", png)
        _tar_add(tf, "a/../../x.png", png)
        _tar_add(tf, "escape", type=tarfile.SYMTYPE, linkname="../../etc/passwd")
        _tar_add(tf, "dir/inside", type=tarfile.SYMTYPE, linkname="a.png")
        _tar_add(tf, "hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        _tar_add(tf, "hard_in", type=tarfile.LNKTYPE, linkname="dir/a.png")
        _tar_add(tf, "dev", type=tarfile.CHRTYPE)
        _tar_add(tf, "fifo", type=tarfile.FIFOTYPE)
        _tar_add(tf, "escape/through.png", png)
        _tar_add(tf, "dir/a.png", b"again")
        _tar_add(tf, "z.png", png)
    dest = tmp_path / "out"
    report = archive.extract(path, dest, SMALL)
    refused = _refused(report)
    assert report.extracted == ["dir/a.png", "escape/through.png", "z.png"]
    assert report.errors == []
    assert "outside the target" in refused["escape"] and "outside the target" in refused["hard"]
    assert "inside the target" in refused["dir/inside"] and "hard link" in refused["hard_in"]
    assert "device" in refused["dev"] and "FIFO" in refused["fifo"]
    assert "duplicate" in refused["dir/a.png"]
    assert {"../evil.png", "/abs.png", "a/../../x.png"} <= set(refused)
    assert (dest / "dir/a.png").read_bytes() == png
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert not (tmp_path / "evil.png").exists()


def test_tar_member_over_limit_and_gzip_bomb(tmp_path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _tar_add(tf, "zeros.bin", b"\0" * (3 * 2**20))
        _tar_add(tf, "huge.bin", os.urandom(5 * 2**20))
        _tar_add(tf, "ok.png", _png())
    report = archive.extract(path, tmp_path / "out", SMALL)
    refused = _refused(report)
    assert report.extracted == ["ok.png"]
    assert "max_ratio" in refused["zeros.bin"]
    assert "max_member_bytes" in refused["huge.bin"]
    assert not (tmp_path / "out/zeros.bin").exists()


def test_truncated_tar_keeps_what_came_before(tmp_path):
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tf:
        _tar_add(tf, "a.png", _png(1))
        _tar_add(tf, "b.bin", os.urandom(20000))
        _tar_add(tf, "c.png", _png(2))
    data = path.read_bytes()
    path.write_bytes(data[: data.find(b"c.png") - 600])
    report = archive.extract(path, tmp_path / "out", SMALL)
    assert report.extracted == ["a.png"]
    assert "unreadable" in _refused(report)["b.bin"]
    assert report.errors


def test_truncated_tar_gz_at_a_header(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        _tar_add(tf, "a.png", _png(1))
        _tar_add(tf, "c.png", _png(2))
    data = raw.getvalue()
    cut = data[: data.find(b"c.png")]  # ends exactly before the second header
    path = tmp_path / "t.tgz"
    path.write_bytes(gzip.compress(cut))
    report = archive.extract(path, tmp_path / "out", SMALL)
    assert report.extracted == ["a.png"]
    assert any("truncated" in e for e in report.errors)


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.rar"
    path.write_bytes(b"Rar!\x1a\x07\x00" + b"\0" * 100)
    with pytest.raises(SourceError, match="not a zip or tar"):
        archive.extract(path, tmp_path / "out")


# --- atomic and idempotent -------------------------------------------------------------------


def test_idempotent_and_replaced_when_changed(tmp_path):
    path = _zip(tmp_path / "a.zip", {"a.png": _png(1)})
    dest = tmp_path / "out"
    first = archive.extract(path, dest, SMALL)
    assert not first.unchanged
    mtime = (dest / "a.png").stat().st_mtime_ns
    again = archive.extract(path, dest, SMALL)
    assert again.unchanged and again.extracted == ["a.png"]
    assert (dest / "a.png").stat().st_mtime_ns == mtime
    _zip(path, {"b.png": _png(2)})
    changed = archive.extract(path, dest, SMALL)
    assert not changed.unchanged and _files(dest) == ["b.png"]
    assert not archive.extract(path, dest, Limits()).unchanged  # other limits: unpacked again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_never_replaces_a_foreign_folder(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "precious.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="refusing to replace"):
        archive.extract(_zip(tmp_path / "a.zip", {"a.png": _png()}), dest)
    assert (dest / "precious.png").exists()


def test_failure_leaves_no_partial_folder(tmp_path, monkeypatch):
    path = _zip(tmp_path / "a.zip", {"a.png": _png(), "b.png": _png(1)})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(archive, "_write_entry", boom)
    with pytest.raises(KeyboardInterrupt):
        archive.extract(path, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [path]


def test_limits_from_params():
    assert Limits.from_params({"max_ratio": 10}).max_ratio == 10
    assert Limits.from_params(None) == Limits()
    with pytest.raises(Exception, match="unknown archive limit"):
        Limits.from_params({"max_size": 1})
    with pytest.raises(Exception, match="positive"):
        Limits.from_params({"max_members": 0})
