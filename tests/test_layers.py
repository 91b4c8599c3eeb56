"""The preprocessing layers. CI runs this file on the TensorFlow, JAX and PyTorch backends."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_npy
from keras_npy import NpyDataset, normalization_layer
from keras_npy.layers import PadOrTrim, Standardize
from helpers import save as _save

BACKEND = keras.backend.backend()
SIDES = [(p, t) for p in ("pre", "post") for t in ("pre", "post")]


def _np(x):
    return keras.ops.convert_to_numpy(x)



def _tf():
    return pytest.importorskip("tensorflow")


# PadOrTrim ------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding, truncating", SIDES)
@pytest.mark.parametrize("size", [2, 4, 7])
def test_pad_or_trim_follows_pad_sequences(padding, truncating, size):
    x = np.arange(1, 3 * size + 1, dtype="int32").reshape(3, size)
    layer = PadOrTrim(4, padding=padding, truncating=truncating, value=-9)
    expected = keras.utils.pad_sequences(x, maxlen=4, dtype="int32", padding=padding,
                                         truncating=truncating, value=-9)
    out = layer(x)
    np.testing.assert_array_equal(_np(out), expected)
    assert _np(out).dtype == np.int32


def test_pad_or_trim_exact_values_on_a_feature_axis():
    x = np.array([[[1, 2], [3, 4], [5, 6]]], dtype="float32")
    np.testing.assert_array_equal(_np(PadOrTrim(5, value=0.5)(x)),
                                  [[[1, 2], [3, 4], [5, 6], [.5, .5], [.5, .5]]])
    np.testing.assert_array_equal(_np(PadOrTrim(5, padding="pre")(x)),
                                  [[[0, 0], [0, 0], [1, 2], [3, 4], [5, 6]]])
    np.testing.assert_array_equal(_np(PadOrTrim(2, truncating="pre")(x)), [[[3, 4], [5, 6]]])
    np.testing.assert_array_equal(_np(PadOrTrim(1, axis=-1)(x)), [[[1], [3], [5]]])
    np.testing.assert_array_equal(_np(PadOrTrim(3, axis=2, padding="pre")(x)),
                                  [[[0, 1, 2], [0, 3, 4], [0, 5, 6]]])


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float16", "float32", "bool"])
def test_pad_or_trim_keeps_the_input_dtype(dtype):
    x = np.ones((2, 3), dtype)
    out = _np(PadOrTrim(5)(x))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.array([[1, 1, 1, 0, 0]] * 2, dtype))


def test_pad_or_trim_arguments_are_checked():
    cases = [
        (dict(length=0), "`length` must be a positive integer. Received: length=0"),
        (dict(length=2.0), "`length` must be a positive integer. Received: length=2.0"),
        (dict(length=2, axis=0),
         "`axis` must be a non-zero integer (axis 0 is the batch axis). Received: axis=0"),
        (dict(length=2, padding="left"),
         "`padding` must be \"pre\" or \"post\". Received: padding='left'"),
        (dict(length=2, truncating=None),
         "`truncating` must be \"pre\" or \"post\". Received: truncating=None"),
        (dict(length=2, value="0"), "`value` must be a number. Received: value='0'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            PadOrTrim(**kwargs)
        assert str(error.value) == message
    with pytest.raises(TypeError, match=r"^`mask` must be True or False. Received: mask=1$"):
        PadOrTrim(2, mask=1)
    with pytest.raises(ValueError) as error:
        PadOrTrim(2, axis=3)(np.zeros((1, 4, 2)))
    assert str(error.value) == ("`axis` must name a non-batch axis of the input, which has rank "
                                "3. Received: axis=3")
    with pytest.raises(ValueError) as error:
        PadOrTrim(2, value=0.5)(np.zeros((1, 4), "int32"))
    assert str(error.value) == ("`value` must be an integer for inputs of dtype int32. "
                                "Received: value=0.5")
    for value, dtype in ((300, "uint8"), (-1, "uint8"), (1e40, "float32"), (2, "bool")):
        with pytest.raises(ValueError) as error:  # 300 would pad uint8 with 44
            PadOrTrim(6, value=value)(np.zeros((1, 4), dtype))
        assert str(error.value) == (f"`value` must be representable in the inputs' dtype "
                                    f"{dtype}. Received: value={value!r}")
    np.testing.assert_array_equal(_np(PadOrTrim(3, value=255)(np.zeros((1, 2), "uint8"))),
                                  [[0, 0, 255]])


def test_pad_or_trim_output_shape_is_fixed():
    inputs = keras.Input((None, 3), dtype="int32")
    outputs = PadOrTrim(6)(inputs)
    assert tuple(outputs.shape) == (None, 6, 3) and outputs.dtype == "int32"
    assert PadOrTrim(6).compute_output_shape((None, None, 3)) == (None, 6, 3)
    assert PadOrTrim(2, axis=-1).compute_output_shape((4, 5, 9)) == (4, 5, 2)


@pytest.mark.parametrize("padding, truncating", SIDES)
def test_mask_marks_added_positions_and_loader_padding(padding, truncating):
    # Sample 0: 3 real steps; sample 1: 2 real steps then a step of the pad value (the loader's
    # padding); a 0 inside a step that is not all 0 stays real.
    x = np.array([[[1, 0], [2, 2], [3, 3]], [[4, 4], [5, 5], [0, 0]]], "float32")
    layer = PadOrTrim(4 if truncating == "post" else 2, padding=padding, truncating=truncating,
                      mask=True)
    real = np.array([[1, 1, 1], [1, 1, 0]])
    expected = keras.utils.pad_sequences(real, maxlen=layer.length, padding=padding,
                                         truncating=truncating).astype(bool)
    np.testing.assert_array_equal(_np(layer.compute_mask(keras.ops.convert_to_tensor(x))),
                                  expected)


def test_mask_of_token_ids_and_of_a_nan_value():
    ids = np.array([[7, 8, 0, 9]], "int32")
    layer = PadOrTrim(6, padding="pre", mask=True)
    np.testing.assert_array_equal(_np(layer.compute_mask(keras.ops.convert_to_tensor(ids))),
                                  [[False, False, True, True, False, True]])
    x = np.array([[1.0, np.nan, 2.0]], "float32")
    nan_layer = PadOrTrim(4, value=float("nan"), mask=True)
    np.testing.assert_array_equal(_np(nan_layer.compute_mask(keras.ops.convert_to_tensor(x))),
                                  [[True, False, True, False]])


def _masked_model(length, padding, head):
    inputs = keras.Input((None, 2))
    x = PadOrTrim(length, padding=padding, mask=True)(inputs)
    return keras.Model(inputs, head(x))


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_masking_aware_layers_ignore_padding(padding):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(1, 3, 2)).astype("float32")
    pooled = _masked_model(6, padding, keras.layers.GlobalAveragePooling1D())
    np.testing.assert_allclose(_np(pooled(raw)), raw.mean(axis=1), rtol=1e-6)
    lstm = keras.layers.LSTM(4, bias_initializer="ones")  # padding steps would move it
    unpadded = keras.Model(inputs := keras.Input((None, 2)), lstm(inputs))
    padded = _masked_model(6, padding, lstm)
    np.testing.assert_allclose(_np(padded(raw)), _np(unpadded(raw)), rtol=1e-5, atol=1e-6)
    # The padding is real input without the mask: the outputs would differ.
    assert not np.allclose(_np(lstm(_np(PadOrTrim(6, padding=padding)(raw)))),
                           _np(unpadded(raw)), atol=1e-4)


def test_an_incoming_mask_is_conformed_and_combined():
    x = np.array([[[1, 1], [-1, -1], [3, 3], [0, 0]]], "float32")
    inputs = keras.Input((None, 2))
    masked = keras.layers.Masking(mask_value=-1.0)(inputs)
    probe = _MaskProbe()
    outputs = probe(PadOrTrim(6, mask=True)(masked))
    keras.Model(inputs, outputs)(x)
    np.testing.assert_array_equal(probe.seen, [[True, False, True, False, False, False]])
    kept = _MaskProbe()
    keras.Model(inputs, kept(PadOrTrim(2, padding="pre")(masked)))(x)
    np.testing.assert_array_equal(kept.seen, [[True, False]])


class _MaskProbe(keras.layers.Layer):
    """Records the mask it receives (eager calls only)."""

    def __init__(self):
        super().__init__()
        self.supports_masking = True
        self.seen = None

    def call(self, inputs, mask=None):
        self.seen = None if mask is None else _np(mask)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


# Standardize ----------------------------------------------------------------------------------


def _standardized(x, axes, epsilon=1e-6):
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.maximum(x.std(axis=axes, keepdims=True), epsilon)


@pytest.mark.parametrize("axis, axes", [(None, (1, 2)), (1, (1,)), (-1, (2,)), ((1, 2), (1, 2))])
def test_standardize_equals_numpy(axis, axes):
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 5, 3)).astype("float32")
    out = _np(Standardize(axis=axis)(x))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, _standardized(x.astype("float64"), axes), atol=2e-5)


def test_standardize_integers_and_constant_samples():
    x = np.array([[1, 2, 3], [5, 5, 5]], "int16")
    np.testing.assert_allclose(_np(Standardize()(x)),
                               [[-1.2247449, 0, 1.2247449], [0, 0, 0]], atol=1e-6)
    tiny = np.array([[0.0, 1e-9]], "float32")
    np.testing.assert_allclose(_np(Standardize(epsilon=0.1)(tiny)), [[-5e-9, 5e-9]], rtol=1e-3)
    # Values near float32's largest: sums of them overflow, the result must not.
    huge = np.array([[3e38, 3e38, 3e38], [-3e38, 0, 3e38], [0, 0, 0]], "float32")
    np.testing.assert_allclose(_np(Standardize()(huge)),
                               [[0, 0, 0], [-1.2247449, 0, 1.2247449], [0, 0, 0]], atol=1e-6)
    masked = _np(Standardize()(huge[:2], mask=np.array([[True, True, False]] * 2)))
    np.testing.assert_allclose(masked, [[0, 0, 0], [-1, 1, 0]], atol=1e-6)


def test_standardize_over_real_positions_under_a_mask():
    raw = np.random.default_rng(2).normal(5.0, 3.0, size=(1, 3, 2)).astype("float32")
    inputs = keras.Input((None, 2))
    outputs = Standardize(axis=1)(PadOrTrim(5, mask=True)(inputs))
    out = _np(keras.Model(inputs, outputs)(raw))
    np.testing.assert_allclose(out[:, :3], _standardized(raw.astype("float64"), (1,)),
                               atol=2e-5)
    np.testing.assert_array_equal(out[:, 3:], 0.0)


def test_standardize_arguments_are_checked():
    for kwargs, message in [
        (dict(axis=0), "`axis` must be None, a non-zero integer or a non-empty tuple of them "
                       "(axis 0 is the batch axis). Received: axis=0"),
        (dict(axis=()), "`axis` must be None, a non-zero integer or a non-empty tuple of them "
                        "(axis 0 is the batch axis). Received: axis=()"),
        (dict(epsilon=-1), "`epsilon` must be a non-negative number. Received: epsilon=-1"),
    ]:
        with pytest.raises(ValueError) as error:
            Standardize(**kwargs)
        assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        Standardize(axis=(1, 3))(np.zeros((2, 3, 4)))
    assert str(error.value) == ("`axis` must name non-batch axes of the input, which has rank 3."
                                " Received: axis=(1, 3)")


# normalization_layer --------------------------------------------------------------------------


@pytest.fixture
def variable_files(tmp_path):
    rng = np.random.default_rng(3)
    samples = [rng.normal(10 * c, 1 + c, size=(2 + 3 * j, 3)).astype("float32")
               for c in range(2) for j in range(4)]
    for k, sample in enumerate(samples):
        _save(str(tmp_path / "data" / f"c{k // 4}" / f"{k % 4}.npy"), sample)
    return str(tmp_path / "data"), samples


@pytest.mark.parametrize("axis", [-1, None])
def test_normalization_layer_uses_unpadded_statistics(variable_files, axis):
    directory, samples = variable_files
    layer = normalization_layer(directory, axis=axis, verbose=False)
    assert type(layer) is keras.layers.Normalization
    values = np.concatenate(samples).astype("float64")
    reduce = 0 if axis == -1 else None
    np.testing.assert_allclose(np.ravel(_np(layer.mean)), np.ravel(values.mean(axis=reduce)),
                               rtol=1e-6)
    np.testing.assert_allclose(np.ravel(_np(layer.variance)),
                               np.ravel(values.var(axis=reduce)), rtol=1e-5)
    out = _np(layer(samples[0][None]))
    np.testing.assert_allclose(out[0], (samples[0] - values.mean(axis=reduce)) /
                               values.std(axis=reduce), rtol=1e-4, atol=1e-5)
    # What adapt() on zero-padded batches gives is not that.
    padded = keras.utils.pad_sequences(samples, padding="post", dtype="float32")
    adapted = keras.layers.Normalization(axis=axis)
    adapted.adapt(padded)
    assert not np.allclose(np.ravel(_np(adapted.mean)), np.ravel(_np(layer.mean)), rtol=1e-2)


@pytest.mark.parametrize("layout", ["files", "rows"])
def test_normalization_layer_refuses_data_that_is_not_finite(tmp_path, layout):
    x = np.ones((6, 3), "float32")
    x[4, 2] = np.nan
    if layout == "rows":
        path = _save(str(tmp_path / "x.npy"), x)
        expected = f"{path}: row 4 of x holds nan at position (2,) (feature 2 of the statistics)"
    else:
        for k in range(6):
            _save(str(tmp_path / "d" / f"{k}.npy"), x[k])
        path = str(tmp_path / "d")
        expected = (f"{tmp_path / 'd' / '4.npy'}: the sample of x holds nan at position (2,) "
                    "(feature 2 of the statistics)")
    with pytest.raises(ValueError) as info:
        normalization_layer(path, verbose=False)
    assert str(info.value) == expected + "; mean and variance need finite values."


def test_normalization_layer_counts_the_training_subset_only(tmp_path):
    x = np.random.default_rng(4).normal(size=(50, 2)).astype("float32")
    path = _save(str(tmp_path / "x.npy"), x)
    keywords = dict(validation_split=0.2, subset="training", shuffle=True, seed=7)
    train = NpyDataset(path, **keywords, verbose=False)
    chosen = x[np.sort(train._source.order.sample_ids)].astype("float64")
    for layer in (normalization_layer(path, **keywords), normalization_layer(train)):
        np.testing.assert_allclose(np.ravel(_np(layer.mean)), chosen.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(np.ravel(_np(layer.variance)), chosen.var(axis=0), rtol=1e-6)
    assert not np.allclose(chosen.mean(axis=0), x.mean(axis=0))


def test_normalization_layer_errors(tmp_path, variable_files):
    path = _save(str(tmp_path / "x.npy"), np.zeros((4, 2), "float32"))
    with pytest.raises(TypeError) as error:
        normalization_layer(NpyDataset(path), seed=1)
    assert str(error.value) == ("normalization_layer() takes no keywords with an NpyDataset, "
                                "whose own arguments select the samples. Received: ['seed']")
    with pytest.raises(TypeError) as error:
        normalization_layer(path, batch_size=4)
    assert str(error.value) == (
        "normalization_layer() got unexpected keyword arguments ['batch_size']; it takes "
        "layout, shuffle, seed, validation_split, subset, follow_links, verbose, "
        "storage_options, cache_dir, cache_bytes.")
    with pytest.raises(ValueError) as error:
        normalization_layer({"a": path, "b": path})
    assert str(error.value) == ("normalization_layer() normalizes one input, but the data has "
                                "2: ['a', 'b']. Pass one input's files.")
    with pytest.raises(ValueError, match="vary in size on axis 1"):
        normalization_layer(variable_files[0], axis=1, verbose=False)


# Saving, loading and export -------------------------------------------------------------------


def _models(directory):
    """Models whose first layers are each preprocessing layer, for raw inputs of any length."""
    normalization = normalization_layer(directory, verbose=False)

    def build(*layers, head=keras.layers.GlobalAveragePooling1D()):
        inputs = keras.Input((None, 3))
        x = inputs
        for layer in layers:
            x = layer(x)
        return keras.Model(inputs, keras.layers.Dense(2)(head(x)))

    return {
        "pad_or_trim": build(PadOrTrim(6, padding="pre", truncating="pre"),
                             head=keras.layers.Flatten()),
        "pad_or_trim_mask": build(PadOrTrim(6, mask=True), keras.layers.LSTM(3),
                                  head=keras.layers.Identity()),
        "standardize": build(PadOrTrim(6, mask=True), Standardize(axis=1)),
        "normalization": build(normalization, PadOrTrim(6), head=keras.layers.Flatten()),
    }


_LOAD_SCRIPT = """
import json, sys
import keras, numpy as np
import keras_npy  # registers the layers; nothing else is defined here
paths = json.loads(sys.argv[1])
for name, (model_path, inputs_path, outputs_path) in paths.items():
    model = keras.saving.load_model(model_path)
    inputs = np.load(inputs_path)
    np.save(outputs_path, keras.ops.convert_to_numpy(model(inputs)))
"""


def _raw_inputs():
    rng = np.random.default_rng(5)
    return [rng.normal(12.0, 3.0, size=(2, n, 3)).astype("float32") for n in (2, 6, 9)]


def test_saved_models_predict_the_same_in_a_fresh_process(tmp_path, variable_files):
    models = _models(variable_files[0])
    inputs = _raw_inputs()[0]
    paths = {}
    for name, model in models.items():
        model_path = str(tmp_path / f"{name}.keras")
        model.save(model_path)
        paths[name] = (model_path, _save(str(tmp_path / f"{name}_in.npy"), inputs),
                       str(tmp_path / f"{name}_out.npy"))
    config = models["pad_or_trim_mask"].get_config()
    json.dumps(config)  # JSON-able
    assert any(layer["registered_name"] == "keras_npy>PadOrTrim" for layer in config["layers"])
    result = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, json.dumps(paths)],
                            capture_output=True, text=True, env={**os.environ,
                                                                 "KERAS_BACKEND": BACKEND})
    assert result.returncode == 0, result.stderr[-3000:]
    for name, model in models.items():
        np.testing.assert_allclose(np.load(paths[name][2]), _np(model(inputs)), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_layer_configs_round_trip():
    for layer in (PadOrTrim(7, axis=-1, padding="pre", truncating="pre", value=-1.5, mask=True),
                  Standardize(axis=(1, 2), epsilon=1e-3), Standardize(axis=-1)):
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
        clone = keras.saving.deserialize_keras_object(config)
        assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


def test_exported_saved_model_serves_raw_inputs_of_any_length(tmp_path, variable_files):
    if BACKEND == "torch":  # Keras exports from torch through torch_xla, not installed here
        pytest.importorskip("torch_xla")
    tf = _tf()
    for name, model in _models(variable_files[0]).items():
        path = str(tmp_path / name)
        model.export(path, format="tf_saved_model", verbose=False)
        served = tf.saved_model.load(path)
        for raw in _raw_inputs():  # shorter than, equal to and longer than the length 6
            np.testing.assert_allclose(served.serve(raw).numpy(), _np(model(raw)), rtol=1e-5,
                                       atol=1e-5, err_msg=f"{name} on length {raw.shape[1]}")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_predictions_equal_eager_ones(variable_files, jit_compile):
    for name, model in _models(variable_files[0]).items():
        model.compile(jit_compile=jit_compile)
        for raw in _raw_inputs():
            np.testing.assert_allclose(model.predict(raw, verbose=0), _np(model(raw)),
                                       rtol=1e-5, atol=1e-5, err_msg=name)


def test_layers_inside_a_tf_data_map():
    tf = _tf()
    raw = np.random.default_rng(6).normal(size=(4, 7, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(raw).batch(2)
    mapped = dataset.map(PadOrTrim(5, padding="pre", truncating="pre")).map(Standardize(axis=1))
    batches = [b.numpy() for b in mapped]
    expected = _standardized(raw[:, 2:].astype("float64"), (1,))
    np.testing.assert_allclose(np.concatenate(batches), expected, atol=2e-5)
    ids = tf.data.Dataset.from_tensor_slices(np.ones((2, 3), "int32")).batch(2)
    out = next(iter(ids.map(PadOrTrim(4, value=7)))).numpy()
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[1, 1, 1, 7]] * 2)


def test_the_public_names():
    assert keras_npy.layers.__all__ == ["PadOrTrim", "Standardize", "normalization_layer"]
    assert keras_npy.normalization_layer is normalization_layer


def test_the_layers_import_keras_and_numpy_only():
    """The layers stand apart from the loader (index, read stage, front ends),
    which only `normalization_layer` imports, when it is called to read data;
    argument checks they share with it are plain functions."""
    import ast

    folder = os.path.dirname(keras_npy.layers.__file__)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        for node in tree.body:  # module-level imports only
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in {"keras", "numpy", "__future__", "math", "numbers",
                                                "os", "sys", "types"} or (
                    module == "keras_npy._checks" or module.startswith("keras_npy.layers.")), (
                    f"{name} imports {module}")
