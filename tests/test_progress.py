"""trainset.progress: bars on a terminal, nothing in logs or pipes, TRAINSET_PROGRESS overrides.

The decode loop of the audit (``features.compute``) runs in a child process on real PNGs, its
stderr a pipe or a pseudo-terminal; its results go to stdout and must not depend on the bars.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainset import progress, similarity
from trainset.kernels import HOST

# decode every image of a folder through the audit's feature loop; results to stdout
DECODE = r"""
import json, sys
from pathlib import Path
from trainset import features, hashing

folder, cache = Path(sys.argv[1]), sys.argv[2]
items = [(hashing.sha256_file(p), str(p)) for p in sorted(folder.glob("*.png"))]
found, stats = features.compute(items, features.FeatureCache(cache, "k"), threads=1)
print(json.dumps({"phash": [found[s]["phash"] for s, _ in items], "decoded": stats.decoded,
                  "tqdm_loaded": "tqdm" in sys.modules}))
"""
N_IMAGES = 3


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for k in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (48 + 8 * k, 64, 3), dtype=np.uint8)).save(folder / f"img{k}.png")
    return folder


def _env(setting: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != progress.ENV}
    if setting is not None:
        env[progress.ENV] = setting
    return env


def _decode_piped(images: Path, cache: Path, setting: str | None) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", DECODE, str(images), str(cache)], env=_env(setting),
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout), proc.stderr


def _decode_on_terminal(images: Path, cache: Path, setting: str | None) -> tuple[dict, bytes]:
    """stderr a pseudo-terminal (80 x 24), stdout a pipe: (results, every byte the terminal got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-c", DECODE, str(images), str(cache)], env=_env(setting),
                                stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    seen = b""
    try:
        while chunk := os.read(master, 4096):
            seen += chunk
    except OSError:  # EIO: the child closed its end
        pass
    finally:
        os.close(master)
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    return json.loads(out), seen


@pytest.fixture(scope="module")
def piped(images, tmp_path_factory) -> tuple[dict, str]:
    """The decode with stderr a pipe and no setting: what a workflow log gets."""
    return _decode_piped(images, tmp_path_factory.mktemp("cache"), None)


def test_a_pipe_gets_nothing_and_tqdm_is_not_even_loaded(piped):
    result, err = piped
    assert err == ""
    assert result["decoded"] == N_IMAGES
    assert not result["tqdm_loaded"]


def test_a_terminal_gets_a_bar_and_the_same_results(images, tmp_path, piped):
    result, seen = _decode_on_terminal(images, tmp_path, None)
    text = seen.decode(errors="replace")
    assert "decode" in text and f"0/{N_IMAGES}" in text and "image/s" in text, text
    assert result["tqdm_loaded"]
    assert result == {**piped[0], "tqdm_loaded": True}


def test_forced_on_into_a_pipe_keeps_the_finished_line(images, tmp_path, piped):
    result, err = _decode_piped(images, tmp_path, "1")
    assert "decode" in err and f"{N_IMAGES}/{N_IMAGES}" in err and "image/s" in err, err
    assert result == {**piped[0], "tqdm_loaded": True}


def test_forced_off_on_a_terminal_prints_nothing(images, tmp_path, piped):
    result, seen = _decode_on_terminal(images, tmp_path, "0")
    assert seen == b""
    assert result == piped[0]


@pytest.mark.parametrize(("setting", "on"), [("1", True), ("on", True), (" ON ", True), ("yes", True),
                                             ("0", False), ("off", False), ("no", False)])
def test_settings(monkeypatch, setting, on):
    monkeypatch.setenv(progress.ENV, setting)
    assert progress.enabled() is on


def test_quiet_stand_in_passes_items_through(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    items = iter(range(5))
    with progress.bar(items, desc="x") as shown:
        assert list(shown) == [0, 1, 2, 3, 4]
        shown.update(3)
    assert list(progress.bar(desc="x")) == []
    monkeypatch.setenv(progress.ENV, "1")
    assert isinstance(progress.bar([1], desc="x", show=False), progress.Quiet)


def test_unset_or_unknown_follows_the_terminal_check(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _FakeTerminal())
    for setting in (None, "", "maybe"):
        if setting is None:
            monkeypatch.delenv(progress.ENV, raising=False)
        else:
            monkeypatch.setenv(progress.ENV, setting)
        assert progress.enabled()
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, a daemon: no stderr at all
    assert not progress.enabled()


class _FakeTerminal:
    def isatty(self) -> bool:
        return True


def test_cosine_tile_bar_counts_every_tile_and_changes_no_pair(monkeypatch, capsys):
    emb = np.random.default_rng(3).normal(size=(10, 4))
    monkeypatch.setenv(progress.ENV, "0")
    quiet = similarity.cosine_pairs(emb, 0.2, be=HOST, block=3)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.ENV, "1")
    shown = similarity.cosine_pairs(emb, 0.2, be=HOST, block=3)
    err = capsys.readouterr().err
    assert "cosine pairs" in err and "10/10" in err, err  # 4 strips of rows: 4 + 3 + 2 + 1 tiles
    for a, b in zip(quiet, shown):
        np.testing.assert_array_equal(a, b)
