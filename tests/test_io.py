"""Reading patterns from every supported format, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from cdi_beamline.errors import CDIValueError
from cdi_beamline.io import read_array, read_patterns, split_dataset_path


@pytest.fixture
def stack():
    return np.random.default_rng(0).random((3, 40, 48)).astype(np.float32)


def test_split_dataset_path():
    assert split_dataset_path("a/b.h5:/entry/data") == (split_dataset_path("a/b.h5")[0], "/entry/data")
    assert split_dataset_path("x.npz:frames")[1] == "frames"
    assert split_dataset_path("C:/data/x.npy")[1] is None


def test_npy_npz_h5_round_trip(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack)
    np.savez(tmp_path / "one.npz", frames=stack)
    np.savez(tmp_path / "two.npz", data=stack, other=stack[:1])
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = stack
        f["entry/extra"] = 1
    for spec in ("s.npy", "one.npz", "two.npz", "two.npz:data", "s.h5:/entry/data/data", "s.h5:entry/data/data"):
        np.testing.assert_array_equal(
            read_patterns(tmp_path / spec if ":" not in spec else f"{tmp_path}/{spec}"), stack
        )
    assert read_patterns(f"{tmp_path}/two.npz:other").shape == (1, 40, 48)
    with pytest.raises(ValueError, match="2 datasets"):
        read_array(tmp_path / "s.h5")
    with pytest.raises(ValueError, match="no dataset '/nope'"):
        read_array(f"{tmp_path}/s.h5:/nope")
    with pytest.raises(ValueError, match="has no array 'zz'"):
        read_array(f"{tmp_path}/two.npz:zz")


def test_edf_and_tif_via_fabio(tmp_path, stack):
    import fabio.edfimage
    import fabio.tifimage

    fabio.edfimage.EdfImage(data=stack[0]).write(str(tmp_path / "f.edf"))
    fabio.tifimage.TifImage(data=stack[1]).write(str(tmp_path / "f.tif"))
    np.testing.assert_allclose(read_patterns(tmp_path / "f.edf")[0], stack[0])
    np.testing.assert_allclose(read_patterns(tmp_path / "f.tif")[0], stack[1])


def test_measured_esrf_edf():
    # the central 128x128 of the measured ESRF ID10 pattern (tests/data/PROVENANCE.md)
    arr = read_patterns(Path(__file__).parent / "data" / "esrf_id10_logo5mu_20sec_crop128.edf")
    assert arr.shape == (1, 128, 128) and arr.dtype == np.float32
    assert (arr == 0).sum() == 424, "beamstop and gaps: missing pixels read as zero"
    assert np.unravel_index(arr[0].argmax(), (128, 128)) == (55, 65) and arr.max() == 841233.0


def test_bad_files(tmp_path, stack):
    with pytest.raises(CDIValueError, match="no such file"):
        read_array(tmp_path / "missing.npy")
    np.save(tmp_path / "r4.npy", np.zeros((2, 2, 8, 8)))
    with pytest.raises(CDIValueError, match=r"got shape \(2, 2, 8, 8\)"):
        read_patterns(tmp_path / "r4.npy")
    (tmp_path / "junk.xyz").write_text("not an image")
    with pytest.raises(CDIValueError, match="cannot read"):
        read_array(tmp_path / "junk.xyz")
    np.save(tmp_path / "c.npy", np.ones((3, 8, 8), complex))
    with pytest.raises(CDIValueError, match="must be real numbers"):
        read_patterns(tmp_path / "c.npy")


@pytest.mark.parametrize("name", ["s.npy", "s.npz", "s.h5"])
def test_empty_truncated_and_corrupt_files_name_the_file(tmp_path, stack, name):
    """Every failure to read is one CDIValueError line naming the file, never a library's own exception."""
    good = tmp_path / name
    {"s.npy": lambda: np.save(good, stack), "s.npz": lambda: np.savez(good, data=stack)}.get(name, lambda: None)()
    if name == "s.h5":
        with h5py.File(good, "w") as f:
            f["data"] = stack
    data = good.read_bytes()
    cases = {"empty": b"", "truncated": data[: len(data) // 2], "corrupt": b"\0garbage" * 64}
    for what, content in cases.items():
        bad = tmp_path / f"{what}{good.suffix}"
        bad.write_bytes(content)
        with pytest.raises(CDIValueError) as info:
            read_array(bad)
        message = str(info.value)
        assert str(bad) in message and "\n" not in message, (what, message)
