"""The CLI's error contract: a CDIError is one specific line on stderr and exit status 2;
any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from cdi_beamline import cli
from cdi_beamline.errors import CDIError, CDIRuntimeError, CDIValueError

N = 64


@pytest.fixture()
def frames(tmp_path):
    yy, xx = np.mgrid[:N, :N] - N // 2
    disc = (((yy / 8) ** 2 + (xx / 8) ** 2) <= 1).astype(np.complex64)
    intensity = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(disc), norm="ortho"))) ** 2
    path = tmp_path / "p.npy"
    np.save(path, intensity.astype(np.float32))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--iterations", "0", "--init", "random"], "iterations=0 returns the initial estimate alone"),
        (["--iterations", "-5"], "ReconstructorConfig.iterations: Input should be greater than or equal to 0"),
        (["--schedule", "HIO**10 * XY"], "unknown algorithm 'XY'"),
        (["--schedule", "(HIO**10"], "expected ')' at the end"),
        (["--schedule", ""], "schedule '': expected an algorithm"),  # refused, not the default
        (["--batch-size", "0"], "ReconstructorConfig.batch_size"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--weights", "NOPE"], "unknown weights 'NOPE'"),
        (["--init", "nns"], "init='nns' needs nns_index"),
        (["--init", "support"], "--init support needs --support FILE"),
    ],
)
def test_bad_option_values(frames, tmp_path, capsys, options, message):
    argv = ["reconstruct", str(frames), "--out", str(tmp_path / "o.h5"), "--device", "cpu", *options]
    assert cli.main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("cdi-beamline reconstruct: error: ") and message in line, line
    assert not (tmp_path / "o.h5").exists()


def test_bad_input_files(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o.h5"), "--device", "cpu"]
    cases = {
        "missing.npy": (None, "no such file: "),
        "empty.npy": (b"", "is empty (0 bytes)"),
        "corrupt.npy": (b"\x93NUMPY garbage that is not an array", "cannot read "),
        "corrupt.h5": (b"not an HDF5 file at all", "cannot read "),
        "junk.edf": (b"not an image", "cannot read "),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        assert cli.main(["reconstruct", str(path), *out]) == 2, name
        line = _error_line(capsys)
        assert message in line and name in line, line  # the message names the file


def test_bad_config_file_and_output_folder(frames, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["reconstruct", str(frames), "--out", str(tmp_path / "o.h5"), "--config", str(bad)]) == 2
    line = _error_line(capsys)
    assert "bad.json is not valid JSON" in line, line
    nowhere = tmp_path / "no" / "such" / "o.h5"
    assert cli.main(["reconstruct", str(frames), "--out", str(nowhere), "--device", "cpu"]) == 2
    line = _error_line(capsys)
    assert f"the folder {nowhere.parent} does not exist" in line, line


@pytest.mark.parametrize(
    "where, message",
    [
        ("/proc/cdi-o.h5", "--out /proc/cdi-o.h5: cannot write in /proc: "),  # no one may create files there
        ("FOLDER", "is a folder; give a file name"),
        ("NOWHERE/o.h5", "does not exist"),
    ],
)
@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_unwritable_output_fails_before_the_compute(frames, tmp_path, capsys, monkeypatch, option, where, message):
    """A bad --out or --plot is one line before any frame is read or reconstructed."""
    from cdi_beamline import pipeline

    def must_not_run(self, *args, **kwargs):
        raise AssertionError("the compute ran before the output was checked")

    monkeypatch.setattr(pipeline.Reconstructor, "reconstruct", must_not_run)
    target = where.replace("FOLDER", str(tmp_path)).replace("NOWHERE", str(tmp_path / "nowhere"))
    paths = {"--out": str(tmp_path / "o.h5"), "--plot": str(tmp_path / "o.png"), option: target}
    argv = ["reconstruct", str(frames), "--out", paths["--out"], "--plot", paths["--plot"], "--device", "cpu"]
    assert cli.main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"cdi-beamline reconstruct: error: {option} ") and message.replace("--out", option) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy"]  # nothing written, no partial file left


def test_output_equal_to_an_input_is_refused_and_the_input_kept(frames, tmp_path, capsys):
    h5 = tmp_path / "scan.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = np.load(frames)[None]
    before = h5.read_bytes()
    for out, extra in ((h5, []), (h5, ["--mask", f"{h5}:/data"])):
        assert cli.main(["reconstruct", f"{h5}:/data", "--out", str(out), "--device", "cpu", *extra]) == 2
        assert "is one of the inputs: it would be overwritten" in _error_line(capsys)
    assert h5.read_bytes() == before
    # and an ordinary run leaves only its output beside the input (no partial file)
    assert (
        cli.main(
            [
                "reconstruct",
                str(frames),
                "--out",
                str(tmp_path / "o.h5"),
                "--device",
                "cpu",
                "--init",
                "random",
                "--iterations",
                "20",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5", "p.npy", "scan.h5"]


def test_a_bug_keeps_its_traceback(frames, tmp_path, monkeypatch):
    """Only CDIError is turned into a message: a ValueError from a bug propagates."""
    from cdi_beamline import pipeline

    def broken(self, *args, **kwargs):
        raise ValueError("a bug, not the user's fault")

    monkeypatch.setattr(pipeline.Reconstructor, "reconstruct", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["reconstruct", str(frames), "--out", str(tmp_path / "o.h5"), "--device", "cpu"])


def test_error_classes_keep_the_builtin_contract():
    assert issubclass(CDIValueError, ValueError) and issubclass(CDIValueError, CDIError)
    assert issubclass(CDIRuntimeError, RuntimeError) and issubclass(CDIRuntimeError, CDIError)
    from cdi_beamline.config import ConfigError

    assert issubclass(ConfigError, CDIValueError)
