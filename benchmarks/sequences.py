"""keras-io's bidirectional LSTM on IMDB-like reviews, one epoch of `model.fit`: the
reviews as per-sample `.npy` files read by NpyDataset against the same reviews padded
in memory, on one Keras backend (the group runs once per backend)."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import Results, written

MAXLEN = 200  # keras-io's example: reviews cut or padded to 200 tokens
VOCABULARY = 20_000
BATCH = 32


def run(results: Results, root: str, num_reviews: int) -> None:
    import keras

    from keras_npy import NpyDataset

    rng = np.random.default_rng(5)
    folder = os.path.join(root, "reviews")
    lengths = rng.integers(20, 2 * MAXLEN, num_reviews)
    reviews, labels = [], []
    for k, length in enumerate(lengths):
        label = k % 2
        review = rng.integers(2, VOCABULARY, length).astype("int32")
        path = os.path.join(folder, ("neg", "pos")[label], f"{k:06d}.npy")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, review)
        reviews.append(review)
        labels.append(label)
    written()
    # keras-io pads with pad_sequences' defaults: zeros before, the start cut.
    x = keras.utils.pad_sequences(reviews, maxlen=MAXLEN)
    y = np.array(labels, "int32")
    ds = NpyDataset(folder, y="inferred", batch_size=BATCH, pad_to=MAXLEN, padding="pre",
                    truncating="pre", shuffle=True, seed=0, verbose=False)

    inputs = keras.Input(shape=(None,), dtype="int32")
    h = keras.layers.Embedding(VOCABULARY, 128)(inputs)
    h = keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True))(h)
    h = keras.layers.Bidirectional(keras.layers.LSTM(64))(h)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])

    backend = keras.backend.backend()
    group = results.group(
        f"sequences ({backend}): keras-io's bidirectional LSTM, {num_reviews:,} reviews of "
        f"20-{2 * MAXLEN} tokens padded to {MAXLEN}, batch {BATCH}, one epoch of fit; ratio to "
        "the same reviews padded in memory")
    results.rate(group, f"in-memory padded arrays ({backend})", "limit", num_reviews,
                 "samples/s", lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0),
                 base=True)
    results.rate(group, f"NpyDataset, one file per review ({backend})", "keras_npy",
                 num_reviews, "samples/s", lambda: model.fit(ds, epochs=1, verbose=0))
