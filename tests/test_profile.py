"""The IPython profile starts non-interactively and runs a short scan end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "profile_cdi"

SCRIPT = """
(raw_uid,) = RE(count([det], 3))
assert session.finish(120)
live_plot.redraw(force=True)
(derived,) = derived_runs(client, raw_uid)
res = load_results(client, derived.metadata["start"]["uid"])
print("RESULT " + json.dumps({
    "raw_events": len(client[raw_uid]["primary"].read()["det_image"]),
    "counts": derived.metadata["stop"]["cdi_counts"],
    "status": list(res["status"]),
    "shape": list(res["amplitude"].shape),
    "init": live.reconstructor.config.init,
    "db_rows": len(db[raw_uid].table()),
}))
"""


def test_profile_starts_in_ipython_and_runs_a_scan(tmp_path):
    # a copy, as a beamline would make: IPython writes history and logs into the profile
    profile = shutil.copytree(PROFILE / "startup", tmp_path / "profile_cdi" / "startup").parent
    env = {
        **os.environ,
        "CDI_DATA_DIR": str(tmp_path / "data"),
        "CDI_ITERATIONS": "20",
        "CDI_DEVICE": "cpu",
        "MPLBACKEND": "Agg",
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    env.pop("CDI_TILED_URI", None)
    ipython = Path(sys.executable).with_name("ipython")
    proc = subprocess.run(
        [str(ipython), f"--profile-dir={profile}", "--no-banner", "--colors=NoColor", "-c", "import json\n" + SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["raw_events"] == 3
    assert result["counts"]["received"] == result["counts"]["reconstructed"] == 3
    # the replayed rocking scan's first frames hold fewer than 100 counts: reconstructed, flagged
    assert result["status"] == ["low_signal"] * 3 and result["shape"] == [3, 64, 64]
    assert result["init"] in ("cnn", "random")
    assert result["db_rows"] == 3  # databroker's v1 view of the same raw run
    assert (tmp_path / "data" / "live.png").stat().st_size > 1000, "the live plot was saved"
