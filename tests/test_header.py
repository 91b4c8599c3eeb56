import io
import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from keras_npy import header as header_lib
from keras_npy.header import read_header

NUMERIC = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
           np.uint64, np.float16, np.float32, np.float64, np.longdouble, np.complex64,
           np.complex128, np.clongdouble]
VERSIONS = [(1, 0), (2, 0), (3, 0)]


def _source_array(kind, dtype):
    base = (np.arange(7 * 10).reshape(7, 10) % 5 - 2).astype(dtype)
    if kind == "C":
        return base
    if kind == "F":
        return np.asfortranarray(base)
    return base[::2, 1::3]  # strided: neither C nor Fortran contiguous


def _save(path, array, version):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, version=version)


def _read_with(header):
    """What a reader does with the header: the data at its offset, in its order."""
    flat = np.fromfile(header.path, header.dtype, offset=header.data_offset)
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: np.dtype(d).name)
def test_round_trip_matches_np_load(tmp_path, dtype, byteorder, layout, version):
    array = _source_array(layout, np.dtype(dtype).newbyteorder(byteorder))
    path = str(tmp_path / "a.npy")
    _save(path, array, version)
    header = read_header(path)
    expected = np.load(path)
    assert header.version == version
    assert header.dtype == expected.dtype and str(header.dtype) == str(expected.dtype)
    assert header.shape == expected.shape
    assert header.fortran_order == (layout == "F")
    assert header.data_offset % 64 == 0
    assert header.nbytes == expected.nbytes
    np.testing.assert_array_equal(_read_with(header), expected)


@pytest.mark.parametrize("shape", [(), (0,), (5,), (0, 3), (2, 3, 4, 5)])
def test_shapes_of_every_rank(tmp_path, shape):
    path = str(tmp_path / "a.npy")
    np.save(path, np.ones(shape, "float32"))
    assert read_header(path).shape == shape
    np.testing.assert_array_equal(_read_with(read_header(path)), np.load(path))


def test_accepts_path_objects_and_long_non_canonical_header(tmp_path):
    path = tmp_path / "a.npy"
    text = "{'shape': (2, 3), 'fortran_order': False, 'descr': '<i2'}"
    _write_raw(path, text, data=np.arange(6, dtype="<i2").tobytes())
    header = read_header(path)
    assert (header.dtype, header.shape, header.path) == (np.dtype("<i2"), (2, 3), str(path))


def _write_raw(path, text, version=(1, 0), data=b"", magic=header_lib.MAGIC,
               encoding="latin1", header_len=None):
    raw = text.encode(encoding) if isinstance(text, str) else text
    size_format = "<H" if version[0] == 1 else "<I"
    length = len(raw) if header_len is None else header_len
    with open(path, "wb") as f:
        f.write(magic + bytes(version) + struct.pack(size_format, length) + raw + data)
    return str(path)


def _header_text(descr="'<f4'", fortran="False", shape="(2,)", extra=""):
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, {extra}}}\n"


MALFORMED = {
    "magic": (dict(magic=b"\x93NUMPX"),
              "expected a .npy file starting with the magic string b'\\x93NUMPY', found "
              "b'\\x93NUMPX'."),
    "version 4.0": (dict(version=(4, 0)),
                    "expected .npy format version 1.0, 2.0 or 3.0, found 4.0."),
    "version 1.1": (dict(version=(1, 1)),
                    "expected .npy format version 1.0, 2.0 or 3.0, found 1.1."),
    "version 0.0": (dict(version=(0, 0)),
                    "expected .npy format version 1.0, 2.0 or 3.0, found 0.0."),
    "missing key": (dict(text="{'descr': '<f4', 'shape': (2,)}"),
                    "expected the header keys ['descr', 'fortran_order', 'shape'], found "
                    "['descr', 'shape']."),
    "extra key": (dict(text=_header_text(extra="'x': 1, ")),
                  "expected the header keys ['descr', 'fortran_order', 'shape'], found "
                  "['descr', 'fortran_order', 'shape', 'x']."),
    "list shape": (dict(text=_header_text(shape="[2]")),
                   "expected 'shape' to be a tuple of non-negative ints, found [2]."),
    "negative shape": (dict(text=_header_text(shape="(-2,)")),
                       "expected 'shape' to be a tuple of non-negative ints, found (-2,)."),
    "bool shape": (dict(text=_header_text(shape="(True,)")),
                   "expected 'shape' to be a tuple of non-negative ints, found (True,)."),
    "float shape": (dict(text=_header_text(shape="(2.0,)")),
                    "expected 'shape' to be a tuple of non-negative ints, found (2.0,)."),
    "int fortran_order": (dict(text=_header_text(fortran="0")),
                          "expected 'fortran_order' to be True or False, found 0."),
    "str fortran_order": (dict(text=_header_text(fortran="'False'")),
                          "expected 'fortran_order' to be True or False, found 'False'."),
    "not a dict": (dict(text="[1, 2, 3]\n"),
                   "expected the header to be a dict, found list: '[1, 2, 3]'"),
    "not a dtype": (dict(text=_header_text(descr="'zz9'")),
                    "expected a numeric dtype, found descr='zz9', which is not a dtype."),
    "descr not a string": (dict(text=_header_text(descr="4")),
                           "expected a numeric dtype, found a int (descr=4); only numeric "
                           "arrays are read."),
    "structured": (dict(text=_header_text(descr="[('a', '<f4'), ('b', '<i4')]")),
                   "expected a numeric dtype, found a structured dtype (descr=[('a', '<f4'), "
                   "('b', '<i4')]); only numeric arrays are read."),
    "object": (dict(text=_header_text(descr="'|O'")),
               "expected a numeric dtype (bool, integer, float or complex), found object "
               "(pickled) data; such files are refused."),
    "unicode": (dict(text=_header_text(descr="'<U5'")),
                "expected a numeric dtype (bool, integer, float or complex), found dtype <U5; "
                "such files are refused."),
    "bytes": (dict(text=_header_text(descr="'|S3'")),
              "expected a numeric dtype (bool, integer, float or complex), found dtype |S3; "
              "such files are refused."),
    "void": (dict(text=_header_text(descr="'|V8'")),
             "expected a numeric dtype (bool, integer, float or complex), found dtype |V8; "
             "such files are refused."),
    "datetime": (dict(text=_header_text(descr="'<M8[ns]'")),
                 "expected a numeric dtype (bool, integer, float or complex), found dtype "
                 "datetime64[ns]; such files are refused."),
    "oversized header": (dict(version=(2, 0), header_len=20_000),
                         "expected a header of at most 10000 bytes, found one of 20000 bytes."),
    "header longer than file": (dict(header_len=500),
                                "expected a header of 500 bytes, found a file of 76 bytes; "
                                "the file is truncated."),
    "bad utf8 in version 3": (dict(version=(3, 0), text=b"{'descr': '\xff'}"),
                              "expected a header in utf8, found bytes that are not: invalid "
                              "start byte at position 11."),
    "huge dimension": (dict(text=_header_text(shape="(" + "9" * 5000 + ",)")),
                       "expected the header to be a Python literal dict, found \"{'descr': "
                       "'<f4', 'fortran_order': False, 'shape': (99999999999999999999999999999"
                       "...\" (SyntaxError)."),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_headers_are_refused_with_a_message(tmp_path, case):
    kwargs, message = MALFORMED[case]
    kwargs = {"text": _header_text(), "data": b"\0" * 8, **kwargs}
    path = _write_raw(tmp_path / "bad.npy", **kwargs)
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == f"{path}: {message}"


MARKER = "pwned.txt"


def test_header_that_is_code_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = f"__import__('os').system('touch {MARKER}')"
    path = _write_raw(tmp_path / "code.npy", code)
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == (
        f"{path}: expected the header to be a Python literal dict, found "
        "\"__import__('os').system('touch pwned.txt')\" (ValueError).")
    dict_with_code = _header_text(descr=code)
    _write_raw(path, dict_with_code)
    with pytest.raises(ValueError, match="expected the header to be a Python literal dict"):
        read_header(path)
    assert not os.path.exists(MARKER)


class _Exploit:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_object_array_whose_pickle_runs_code_is_refused(tmp_path):
    marker = tmp_path / MARKER
    array = np.array([_Exploit(str(marker)), None], dtype=object)
    path = str(tmp_path / "evil.npy")
    np.save(path, array, allow_pickle=True)
    marker.unlink(missing_ok=True)  # np.save ran no code, but make sure
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == (
        f"{path}: expected a numeric dtype (bool, integer, float or complex), found object "
        "(pickled) data; such files are refused.")
    assert not marker.exists()
    # The payload is real: unpickling it would have created the marker.
    with open(path, "rb") as f:
        f.seek(read_header_offset(path))
        pickle.load(f)
    assert marker.exists()


def read_header_offset(path):
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f, max_header_size=10_000)
        return f.tell()


def test_truncated_file(tmp_path):
    path = str(tmp_path / "a.npy")
    np.save(path, np.zeros((10, 4), "float64"))
    with open(path, "r+b") as f:
        f.truncate(128 + 100)
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == (f"{path}: expected 320 data bytes for shape (10, 4) of dtype "
                               "float64, found 100; the file is truncated.")


def test_trailing_bytes(tmp_path):
    path = str(tmp_path / "a.npy")
    np.save(path, np.zeros(3, "int16"))
    with open(path, "ab") as f:
        f.write(b"xx")
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == (f"{path}: expected 6 data bytes for shape (3,) of dtype int16, "
                               "found 8; the file has trailing bytes.")


def test_header_claiming_petabytes_allocates_nothing(tmp_path):
    path = _write_raw(tmp_path / "huge.npy", _header_text(descr="'<f8'", shape="(2**50,)"))
    _write_raw(path, _header_text(descr="'<f8'", shape="(1125899906842624,)"), data=b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value) == (f"{path}: expected 9007199254740992 data bytes for shape "
                               "(1125899906842624,) of dtype float64, found 64; the file is "
                               "truncated.")
    assert peak < 256 * 1024


@pytest.mark.parametrize("content, found", [(b"", "b''"), (b"\x93NUM", "b'\\x93NUM'")])
def test_files_too_short_for_a_preamble(tmp_path, content, found):
    path = tmp_path / "short.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == (f"{path}: expected a .npy file starting with the magic string "
                               f"b'\\x93NUMPY', found {found}.")


def test_file_ending_inside_the_length_field(tmp_path):
    path = tmp_path / "short.npy"
    path.write_bytes(header_lib.MAGIC + b"\x02\x00\x10")
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == (f"{path}: expected a header length field, found end of file; "
                               "the file is truncated.")


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.npy"
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == f"{path}: cannot open the file: No such file or directory."


def test_canonical_fast_path_and_literal_path_agree(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((3, 1), ">c8", order="F"))
    path = tmp_path / "a.npy"
    path.write_bytes(buffer.getvalue())
    fast = read_header(path)
    text = buffer.getvalue()[10:fast.data_offset].decode("latin1")
    assert header_lib._CANONICAL.match(text)
    assert header_lib._parse_header(str(path), " " + text) == (
        fast.dtype, fast.fortran_order, fast.shape)


# The reader against NumPy's: whatever NumPy says a header is, the reader says
# the same or refuses it with a ValueError that names the file; it never
# accepts what NumPy refuses, and never raises anything else.

try:  # NumPy's own reader of a header, for all three versions
    from numpy.lib._format_impl import _read_array_header as _NUMPY_HEADER_READER
except ImportError:  # NumPy 1.x
    from numpy.lib.format import _read_array_header as _NUMPY_HEADER_READER


def _preamble(text: bytes, version: tuple[int, int]) -> bytes:
    length = struct.pack("<H" if version[0] == 1 else "<I", len(text))
    return header_lib.MAGIC + bytes(version) + length + text


def _numpy_says(path):
    """`(dtype, shape, fortran_order)` as NumPy reads the file, or `None` when
    NumPy refuses it (any exception, as `np.load` raises many kinds)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = np.load(path, allow_pickle=False)
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = _NUMPY_HEADER_READER(f, version)
    except Exception:
        return None
    if not isinstance(array, np.ndarray):
        return None
    return dtype, shape, fortran


def _claimed_bytes(head: bytes, version) -> int:
    """The data bytes that NumPy reads a header to claim (0 when it cannot read
    it, or when that is more than a test should write)."""
    import warnings

    stream = io.BytesIO(head)
    stream.seek(6 + 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape, _, dtype = _NUMPY_HEADER_READER(stream, version)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    except Exception:
        return 0
    return nbytes if 0 <= nbytes < 2**16 else 0


def _check_against_numpy(path):
    expected = _numpy_says(path)
    try:
        header = read_header(path)
    except ValueError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        return "refused"
    assert expected is not None, f"accepted what NumPy refuses: {header}"
    assert (header.dtype, header.shape, header.fortran_order) == expected
    return "read"


_DESCRS = [np.dtype(c).newbyteorder(o).str for c in "?bBhHiIlLqQefdgFDG" for o in "<>"] + [
    "f4", "float32", "<U3", "O", "|V4", "<M8[s]", ",", "<f4 ", "", "<f", "[('a', '<f4')]"]
_SHAPES = [(), (0,), (3,), (2, 3), (0, 2**70), (2**64, 0), (2**63, 0), (2**63 - 1, 0),
           (10**13, 0), (2**62, 2**62, 0), (1,) * 65, (1,) * 64, (-1,), (True,), [2]]


def _shape_text(shape) -> str:
    return repr(shape) if not isinstance(shape, tuple) or len(shape) != 1 else f"({shape[0]},)"


@pytest.fixture(scope="module")
def hypothesis_strategies():
    return pytest.importorskip("hypothesis")


def test_headers_agree_with_numpy_or_are_refused(tmp_path, hypothesis_strategies):
    hypothesis = hypothesis_strategies
    st = hypothesis.strategies

    padding = st.text(alphabet=" \t\n\r\x0c\xa0", max_size=4)
    texts = st.builds(
        lambda descr, fortran, shape, pad, lead, extra: (
            lead + "{" + f"'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': "
            f"{_shape_text(shape)}, " + extra + "}" + pad),
        st.sampled_from(_DESCRS) | st.text(max_size=6),
        st.sampled_from([True, False, 0, 1, None, "True"]),
        st.sampled_from(_SHAPES) | st.lists(st.integers(-2, 2**65), max_size=3).map(tuple),
        padding, st.sampled_from(["", " ", "\t", "\n"]),
        st.sampled_from(["", "'x': 1, ", "'shape': (1,), "]))
    path = str(tmp_path / "h.npy")

    @hypothesis.settings(max_examples=400, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(text=texts, version=st.sampled_from(VERSIONS),
                      extra_bytes=st.sampled_from([0, 0, 0, -1, 1]))
    def check(text, version, extra_bytes):
        head = _preamble(text.encode("utf8" if version[0] == 3 else "latin1", "replace"),
                         version)
        with open(path, "wb") as f:
            f.write(head + bytes(max(0, _claimed_bytes(head, version) + extra_bytes)))
        _check_against_numpy(path)

    check()


def test_what_np_save_writes_is_read_as_numpy_reads_it(tmp_path, hypothesis_strategies):
    hypothesis = hypothesis_strategies
    st = hypothesis.strategies
    path = str(tmp_path / "s.npy")

    @hypothesis.settings(max_examples=200, deadline=None, database=None)
    @hypothesis.given(dtype=st.sampled_from(NUMERIC), byteorder=st.sampled_from("<>"),
                      shape=st.lists(st.integers(0, 4), max_size=5).map(tuple),
                      fortran=st.booleans(), version=st.sampled_from(VERSIONS))
    def check(dtype, byteorder, shape, fortran, version):
        array = np.zeros(shape, np.dtype(dtype).newbyteorder(byteorder),
                         order="F" if fortran else "C")
        _save(path, array, version)
        assert _check_against_numpy(path) == "read"

    check()


def test_a_byte_level_mutation_fuzz_of_headers(tmp_path):
    """Thousands of files whose header bytes were flipped, inserted, dropped,
    or whose length field or size were changed: each is read as NumPy reads it
    or refused with a ValueError that names it."""
    rng = np.random.default_rng(2026)
    seeds = []
    for k, (dtype, shape, fortran, version) in enumerate([
            ("<f4", (3, 4), False, (1, 0)), (">i8", (2,), False, (2, 0)),
            ("|b1", (), False, (1, 0)), ("<c16", (2, 1, 2), True, (3, 0)),
            ("<u2", (0, 5), False, (1, 0)), (">f2", (4, 2), True, (1, 0))]):
        path = str(tmp_path / f"seed_{k}.npy")
        _save(path, np.zeros(shape, dtype, order="F" if fortran else "C"), version)
        with open(path, "rb") as f:
            seeds.append(f.read())
    path, outcomes = str(tmp_path / "m.npy"), {"read": 0, "refused": 0}
    for case in range(3000):
        content = bytearray(seeds[case % len(seeds)])
        header_end = 128 if content[6] == 1 else 192
        for _ in range(int(rng.integers(1, 4))):
            what = rng.integers(6)
            at = int(rng.integers(0, min(len(content), header_end)))
            if what == 0:  # a byte of the header, any value
                content[at] = int(rng.integers(256))
            elif what == 1:  # a printable byte: more of the parser's paths
                content[at] = int(rng.choice(list(b" ,()'{}:0123456789<>|=fibucTF\n\t")))
            elif what == 2:
                content.insert(at, int(rng.integers(256)))
            elif what == 3:
                del content[at]
            elif what == 4:  # the length field
                content[8 + int(rng.integers(2))] = int(rng.integers(256))
            else:  # the file's end
                del content[len(content) - int(rng.integers(1, 9)):]
        with open(path, "wb") as f:
            f.write(bytes(content))
        outcomes[_check_against_numpy(path)] += 1
    assert outcomes["read"] > 20 and outcomes["refused"] > 1000, outcomes


@pytest.mark.parametrize("text, message", [
    ("{'descr': ',', 'fortran_order': False, 'shape': (0,), }",
     "expected a numeric dtype, found descr=',', which is not a dtype."),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1180591620717411303424), }",
     "expected a shape NumPy can make (each dimension, and the bytes of the nonzero ones, at "
     "most 9223372036854775807), found '(0, 1180591620717411303424)' of dtype float32."),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775808, 0), }",
     "expected a shape NumPy can make (each dimension, and the bytes of the nonzero ones, at "
     "most 9223372036854775807), found '(9223372036854775808, 0)' of dtype float32."),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % ("1, " * 70),
     "expected at most 64 dimensions, found 70."),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (012, 2), }",
     "expected the header to be a Python literal dict, found \"{'descr': '<f4', "
     "'fortran_order': False, 'shape': (012, 2), }\" (SyntaxError)."),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), } \xa0\n",
     "expected the header to be a Python literal dict, found \"{'descr': '<f4', "
     "'fortran_order': False, 'shape': (0,), }\" (SyntaxError)."),
])
def test_headers_numpy_refuses_are_value_errors(tmp_path, text, message):
    path = str(tmp_path / "x.npy")
    with open(path, "wb") as f:
        f.write(_preamble(text.encode("latin1"), (1, 0)))
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert str(info.value) == f"{path}: {message}"
    assert _numpy_says(path) is None
