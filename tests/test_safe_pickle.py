"""The restricted unpickler: legacy Python-2 pickles load, anything that asks for code is refused."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from t2i.data import safe_pickle
from t2i.data.safe_pickle import UnsafePickleError

# Hand-written Python-2 protocol-2 pickle of ['caf\xe9', 'abc'] (SHORT_BINSTRING opcodes, latin-1 bytes).
PY2_LIST = b"\x80\x02]q\x00(U\x04caf\xe9q\x01U\x03abcq\x02e."
# Python-2 numpy int64 scalar 7: numpy.core.multiarray.scalar(dtype('i8'), '<8 raw bytes as a py2 str>').
PY2_NP_SCALAR = (
    b"\x80\x02cnumpy.core.multiarray\nscalar\nq\x00cnumpy\ndtype\nq\x01U\x02i8K\x00K\x01\x87Rq\x02"
    b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbU\x08\x07\x00\x00\x00\x00\x00\x00\x00\x86R."
)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_protocol2_builtins_and_numpy_round_trip(tmp_path):
    value = [["001.A/a_1", "002.B/b_2"], {"w": 1, 0: "<end>"}, np.int64(3), np.arange(4, dtype=np.int32), 2.5, {1, 2}]
    path = tmp_path / "ok.pickle"
    path.write_bytes(pickle.dumps(value, protocol=2))
    loaded = safe_pickle.load(path)
    assert loaded[:2] == value[:2] and loaded[2] == 3 and loaded[4:] == value[4:]
    np.testing.assert_array_equal(loaded[3], value[3])


def test_python2_strings_decode_as_latin1():
    assert safe_pickle.loads(PY2_LIST) == ["café", "abc"]


def test_python2_numpy_scalar():
    value = safe_pickle.loads(PY2_NP_SCALAR)
    assert int(value) == 7 and value.dtype == np.int64


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "filenames.pickle"
    path.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        safe_pickle.load(path)
    message = str(info.value)
    assert str(path) in message and "system" in message and ("posix" in message or "os" in message)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03.", "builtins.eval"),
        (b"\x80\x02csubprocess\nPopen\nq\x00.", "subprocess.Popen"),
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.", "encoding"),
    ],
)
def test_other_globals_are_refused(payload, words):
    with pytest.raises(UnsafePickleError, match=words.replace(".", r"\.")):
        safe_pickle.loads(payload, "x.pickle")


def test_object_arrays_and_truncation_are_refused():
    with pytest.raises(UnsafePickleError, match="not a plain numeric dtype"):
        safe_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    with pytest.raises(UnsafePickleError, match="t.pickle: not a readable pickle"):
        safe_pickle.loads(PY2_LIST[:10], "t.pickle")
