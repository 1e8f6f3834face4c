"""Placeholder ``torchvision`` so imagededup's *hashing* methods import without the real one.

``imagededup.methods`` imports ``imagededup.utils.models`` (its CNN encoders) even when only
``PHash`` is used, and that module needs ``torchvision`` at import time: ``from torchvision
import models``, ``transforms.Compose([...])`` and ``ViT_B_16_Weights....transforms()`` in class
bodies. Here every such name is an inert :class:`_Placeholder`; building a CNN model
(``mobilenet_v3_small``, ``vit_b_16``, ``efficientnet_b4``) raises instead, so nothing can run
on a fake network. ``benchmarks/dedup.py`` puts this folder on ``sys.path`` only when the real
``import torchvision`` fails, and never uses imagededup's CNN method.
"""

from __future__ import annotations

import sys
import types

__version__ = "0.0.0+placeholder"
PLACEHOLDER = True


class _Placeholder:
    """Any attribute or call gives another placeholder (enough for class bodies at import)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Placeholder":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs) -> "_Placeholder":
        return _Placeholder(f"{self._name}()")

    def __repr__(self) -> str:
        return f"<torchvision placeholder {self._name}>"


def _no_model(name: str):
    def build(*args, **kwargs):
        raise ImportError(f"torchvision.models.{name}: placeholder torchvision (benchmarks/_imagededup_shim); "
                          "imagededup's CNN methods need the real torchvision")

    return build


def _module(name: str, models: tuple[str, ...] = ()) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: _Placeholder(f"{name}.{attr}")  # PEP 562
    for model in models:
        setattr(module, model, _no_model(model))
    sys.modules[name] = module
    return module


models = _module(__name__ + ".models", ("mobilenet_v3_small", "vit_b_16", "efficientnet_b4"))
models.vision_transformer = _module(__name__ + ".models.vision_transformer", ("vit_b_16",))
transforms = _module(__name__ + ".transforms")
transforms.transforms = _module(__name__ + ".transforms.transforms")
