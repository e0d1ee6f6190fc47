"""Threads and workers: the plan, its precedence, the batch split and what the CLI records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest
import torch

from cdi_beamline import pipeline, resources
from cdi_beamline.config import ReconstructorConfig
from cdi_beamline.errors import CDIValueError
from cdi_beamline.physics import simulate_batch
from cdi_beamline.pipeline import Reconstructor


@pytest.fixture()
def fresh(monkeypatch):
    """No plan applied, OMP_NUM_THREADS unset; torch's threads restored after the test."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(resources, "_applied", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield monkeypatch
    torch.set_num_threads(threads)


def test_plan_default_explicit_and_environment(fresh):
    assert resources.plan(n_cores=4) == resources.Plan(threads=1, workers=4, chosen_by="cores")
    assert resources.plan().workers == resources.cpu_count() >= 1
    assert resources.plan(n_cores=4, threads=3) == resources.Plan(threads=3, workers=1, chosen_by="threads")
    fresh.setenv("OMP_NUM_THREADS", "2")
    assert resources.plan(n_cores=4) == resources.Plan(threads=2, workers=1, chosen_by="OMP_NUM_THREADS")
    assert resources.plan(threads=3).chosen_by == "threads"  # the option beats the environment
    fresh.setenv("OMP_NUM_THREADS", "many")  # unusable: as if unset
    assert resources.plan(n_cores=2).chosen_by == "cores"
    for bad in ({"threads": 0}, {"n_cores": 0}):
        with pytest.raises(CDIValueError, match="must be >= 1"):
            resources.plan(**bad)


def test_current_is_the_applied_plan_until_torch_threads_change(fresh):
    assert resources.current() == resources.Plan(torch.get_num_threads(), 1, "torch")  # nothing applied
    applied = resources.apply(resources.plan(n_cores=3))
    assert torch.get_num_threads() == 1 and resources.current() == applied
    torch.set_num_threads(2)  # the user's own setting wins: one worker at their thread count
    assert resources.current() == resources.Plan(threads=2, workers=1, chosen_by="torch")


def test_passive_openmp_keeps_the_users_setting(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    resources.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    resources.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("cli", [True, False])
def test_the_cli_process_loads_no_numba_extension(cli):
    """Importing the CLI (a process the package owns) keeps numba's third-party extensions
    (awkward's, when installed) unloaded through a refinement; a library user's process loads them."""
    from importlib.metadata import entry_points

    extensions = {ep.value.split(".")[0] for ep in entry_points(group="numba_extensions", name="init")}
    if not cli and "awkward" not in extensions:
        pytest.skip("awkward's numba extension is not installed: nothing to load")
    code = (
        ("import cdi_beamline.cli; " if cli else "")
        + "import sys, torch; from cdi_beamline.phasing import refine; "
        + "refine(torch.ones(1, 16, 16), seed=0); print('awkward' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split()[-1] == str(not cli), out.stderr


def test_split_batch_runs_slices_in_threads_and_merges_in_order():
    assert [(s.start, s.stop) for s in resources.slices(10, 3)] == [(0, 4), (4, 7), (7, 10)]
    assert [(s.start, s.stop) for s in resources.slices(2, 4)] == [(0, 1), (1, 2)]
    assert [(s.start, s.stop) for s in resources.slices(0, 2)] == [(0, 0)]
    assert [(s.start, s.stop) for s in resources.slices(40, 4, min_size=16)] == [(0, 20), (20, 40)]
    both = threading.Barrier(2, timeout=30)  # passes only if two slices run at the same time

    def work(s: slice):
        both.wait()
        return list(range(s.start, s.stop)), threading.get_ident()

    out = resources.split_batch(work, 7, 2)
    assert [v for values, _ in out for v in values] == list(range(7))
    assert out[0][1] == threading.get_ident() != out[1][1]  # the first slice in the caller's thread

    def fail(s: slice):
        if s.start:
            raise CDIValueError("bad slice")
        return s

    with pytest.raises(CDIValueError, match="bad slice"):
        resources.split_batch(fail, 4, 2)


@pytest.mark.parametrize("init", ["cnn", "random"])
def test_a_split_batch_gives_the_same_reconstruction(fresh, init):
    """Refined (and, from the CNN, started) in 3 slices in parallel threads or as one batch: the
    same arrays, bit for bit (CPU, same seed). Each frame's arithmetic is its own (per-frame
    sums, FFTs per frame; the numba backend prunes its DFTs to the batch's support box, which
    changes which values are computed, not how), and random phases are drawn for the whole
    batch before the split."""
    import cdi_beamline.models as models

    n = 3 * resources.MIN_SLICE
    frames = simulate_batch(n, seed=4, device="cpu").modulus.numpy() ** 2
    rec = Reconstructor(ReconstructorConfig.build(init=init, iterations=60), device="cpu")
    sizes: list[int] = []
    cnn_sizes: list[int] = []
    real, real_cnn = pipeline.refine, models.initial_estimate

    def spy(modulus, **kwargs):
        sizes.append(len(modulus))
        return real(modulus, **kwargs)

    def cnn_spy(net, modulus, **kwargs):
        cnn_sizes.append(len(modulus))
        return real_cnn(net, modulus, **kwargs)

    fresh.setattr(pipeline, "refine", spy)
    fresh.setattr(models, "initial_estimate", cnn_spy)
    resources.apply(resources.plan(threads=1))
    one = rec.reconstruct(frames, seed=7)
    resources.apply(resources.plan(n_cores=3))
    split = rec.reconstruct(frames, seed=7)
    assert sizes == [n, *[resources.MIN_SLICE] * 3]
    assert cnn_sizes == ([n, *[resources.MIN_SLICE] * 3] if init == "cnn" else [])
    assert rec.provenance()["resources"] == {"threads": 1, "workers": 3, "chosen_by": "cores"}
    for name in ("object", "support", "chi2", "chi2_history", "start_amplitude"):
        np.testing.assert_array_equal(getattr(one, name), getattr(split, name), err_msg=name)
    assert one.status == split.status and one.init == split.init


def _recorded(tmp_path, *options: str, env: dict[str, str]) -> dict:
    """``resources`` of the provenance a whole ``cdi-beamline reconstruct`` process writes."""
    frames = simulate_batch(2, seed=1, device="cpu").modulus.numpy() ** 2
    np.save(tmp_path / "stack.npy", frames)
    out = tmp_path / "out.h5"
    cmd = [sys.executable, "-m", "cdi_beamline.cli", "reconstruct", str(tmp_path / "stack.npy"), "--out", str(out)]
    subprocess.run([*cmd, "--iterations", "5", "--device", "cpu", *options], env=env, check=True, timeout=300)
    with h5py.File(out) as f:
        return json.loads(f.attrs["provenance"])["resources"]


def test_reconstruct_applies_the_plan_and_records_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    assert _recorded(tmp_path, env=env) == {"threads": 1, "workers": resources.cpu_count(), "chosen_by": "cores"}
    env["OMP_NUM_THREADS"] = "1"
    assert _recorded(tmp_path, "--threads", "2", env=env) == {"threads": 2, "workers": 1, "chosen_by": "threads"}
