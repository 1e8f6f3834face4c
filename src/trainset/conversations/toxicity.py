"""Optional toxicity model: the Jigsaw-trained classifier of the PyPI package ``toxic-comment-classifier``.

A lexicon misses insults it has not listed; a model trained on the Jigsaw toxic-comment data
catches more. The package (0.3.0) ships the weights (a bidirectional LSTM over a 20,000-word
vocabulary, 100 tokens) and its fitted Keras tokenizer, but its own ``model.py`` imports
TensorFlow. Here the same network is rebuilt with Keras 3 on the torch backend and the package's
weight file loaded into it, so neither TensorFlow nor a download is needed::

    pip install --no-deps toxic-comment-classifier==0.3.0
    pip install keras==3.15.1   # brings absl-py, h5py, ml-dtypes, namex, optree, rich

The tokenizer is a pickle; it is read with an unpickler that admits only the classes it holds.
:func:`score` is the probability of the Jigsaw ``toxic`` label (the other five labels are
sub-types of it, see :func:`classify`). The model reads English comments only, the first 100
words of each.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..embeddings import MissingDependency, ModelFileNotFound

DIST = "toxic-comment-classifier"
INSTALL = "pip install --no-deps toxic-comment-classifier==0.3.0 && pip install keras==3.15.1"
LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN = 100
VOCAB_SIZE = 20000
EMBEDDING_DIM = 50

_ALLOWED = {
    ("keras.src.legacy.preprocessing.text", "Tokenizer"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "int"),
}


class _TokenizerUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"the toxicity tokenizer pickle names {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def _package_dir() -> Path:
    missing = [m for m in ("toxic_classifier", "keras") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependency(f"the toxicity model needs {', '.join(missing)}, not installed; install with: {INSTALL}")
    return Path(importlib.util.find_spec("toxic_classifier").submodule_search_locations[0])


@functools.lru_cache(maxsize=1)
def _model():
    folder = _package_dir() / "model"
    weights, vocabulary = folder / "model.weights.h5", folder / "tokenizer.pickle"
    for path in (weights, vocabulary):
        if not path.is_file():
            raise ModelFileNotFound(f"{path} is missing from the {DIST} package: {INSTALL}")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from keras import layers

    if keras.backend.backend() != "torch":
        raise MissingDependency(f"the toxicity model runs on Keras' torch backend, but Keras was loaded with {keras.backend.backend()!r}; set KERAS_BACKEND=torch")
    with vocabulary.open("rb") as handle:
        tokenizer = _TokenizerUnpickler(handle).load()
    inputs = keras.Input(shape=(MAXLEN,))
    x = layers.Embedding(VOCAB_SIZE, EMBEDDING_DIM, trainable=False)(inputs)
    x = layers.Bidirectional(layers.LSTM(50, return_sequences=True, dropout=0.1, recurrent_dropout=0.1))(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(50, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(len(LABELS), activation="sigmoid")(x)
    network = keras.Model(inputs, outputs)
    network.load_weights(str(weights))
    return keras, tokenizer, network


def available() -> bool:
    """Whether the package and Keras are installed (without loading them)."""
    try:
        _package_dir()
    except MissingDependency:
        return False
    return True


def classify(texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """``(len(texts), 6)`` probabilities of :data:`LABELS`."""
    if len(texts) == 0:
        return np.zeros((0, len(LABELS)), dtype=np.float32)
    keras, tokenizer, network = _model()
    sequences = keras.utils.pad_sequences(tokenizer.texts_to_sequences(list(texts)), maxlen=MAXLEN)
    with warnings.catch_warnings():  # Keras' torch backend converts tensors with a pre-NumPy-2 call
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning)
        out = network.predict(sequences, batch_size=batch_size, verbose=0)
    return np.asarray(out, dtype=np.float32)


def score(texts: Sequence[str]) -> np.ndarray:
    """Probability that each text is toxic (the Jigsaw ``toxic`` label), float32 in [0, 1]."""
    return classify(texts)[:, 0]
