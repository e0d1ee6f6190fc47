"""Model cards: ship a training output into the package, and render MODEL_CARD.md from the registry.

Usage::

    python -m cdi_beamline.models.card ship RUN_DIR NAME --metrics EVAL/metrics.json --notes "..."
    python -m cdi_beamline.models.card            # (re)write cdi_beamline/models/MODEL_CARD.md

``ship`` copies ``RUN_DIR/model.pt`` to ``models/weights/NAME.pt``, writes the card
``NAME.json`` (training meta + test metrics + notes) and prints the sha256 to put in
:class:`~cdi_beamline.models.weights.CDINetWeights`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from ..errors import CDIValueError
from .evaluation import PAPER
from .inference import SUPPORT_THRESHOLD
from .training import file_sha256
from .weights import HISTORY_SUFFIX, CDINetWeights

__all__ = ["ship", "render_card", "CARD_PATH"]

PACKAGE_DIR = Path(__file__).resolve().parent
CARD_PATH = PACKAGE_DIR / "MODEL_CARD.md"


def _test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    cnn, nns, ref = metrics["cnn"], metrics["nns"], metrics["refinement"]
    out = {
        "n": metrics["n"],
        "seed": metrics["seed"],
        **{f"cnn_chi2_{k}": cnn[f"chi2_{k}"]["gamma_mean"] for k in ("modulus", "amplitude", "phase")},
        **{f"cnn_chi2_{k}_median": cnn[f"chi2_{k}"]["median"] for k in ("modulus", "amplitude", "phase")},
        "cnn_ms_per_pattern": 1e3 * cnn["seconds_per_pattern"],
        **(
            {
                f"cnn_sym8_chi2_{k}": cnn["symmetries8"][f"chi2_{k}"]["gamma_mean"]
                for k in ("modulus", "amplitude", "phase")
            }
            if "symmetries8" in cnn
            else {}
        ),
        "cnn_device": cnn["device"],
        "nns_index_size": nns["index_size"],
        "nns_chi2_modulus": nns["nns_chi2_modulus"]["gamma_mean"],
        "nns_over_cnn_chi2_modulus": nns["ratio_modulus_nns_over_cnn"],
        "refinement": {k: v for k, v in ref.items()},
    }
    if "cnn_chi2_modulus" in metrics.get("measured", {}):
        out["aps_cnn_chi2"] = metrics["measured"]["cnn_chi2_modulus"]
        out["aps_cnn_seeded_refined_chi2"] = metrics["measured"]["cnn_seeded_chi2"]
        out["aps_random_refined_chi2_median"] = metrics["measured"]["random_chi2_median"]
    return out


def ship(run_dir: str | Path, name: str, metrics: str | Path | None = None, notes: str = "") -> dict[str, Any]:
    """Copy a training output into ``models/weights/`` with its card and its training history
    (``history.jsonl``, if kept: the loss curves of Fig. 3a); return the card."""
    run_dir = Path(run_dir)
    train_meta = json.loads((run_dir / "meta.json").read_text())
    dest = PACKAGE_DIR / "weights" / f"{name}.pt"
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(run_dir / "model.pt", dest)
    if (run_dir / "history.jsonl").is_file():  # the loss curves (Fig. 3a) travel with the weights
        shutil.copyfile(run_dir / "history.jsonl", dest.with_suffix(HISTORY_SUFFIX))
    sha = file_sha256(dest)
    if sha != train_meta["sha256"]:
        raise CDIValueError(f"{run_dir}/model.pt does not match the sha256 in its meta.json")
    model = train_meta["recipe"]["model"]
    card = {
        "name": name,
        "file": dest.name,
        "sha256": sha,
        "file_bytes": dest.stat().st_size,
        "num_params": train_meta["num_params"],
        "architecture": f"CDINet (Wu et al. 2021, Fig. 1), base_channels {model['base_channels']}, depth {model['depth']}",
        "input_normalisation": (
            f"inside CDINet.forward: x = log1p(m / max(m) / {model['input_floor']}) / log1p(1 / {model['input_floor']}) "
            "per pattern — invariant to the photon scale, the log compresses the decades of the pattern"
        ),
        "output": "amplitude (B,32,32) >= 0 (max ~1) and phase (B,32,32) radians, global phase fixed so the "
        "amplitude-weighted mean phase is 0; twin (conj(o(-r))) is not fixed: either may come out",
        "support_threshold": SUPPORT_THRESHOLD,
        "recipe": train_meta["recipe"],
        "generator": train_meta["generator"],
        "training": {
            **{
                k: train_meta[k]
                for k in ("steps", "samples_seen", "stopped", "best_step", "training_time_s", "machine", "created")
            },
            "init_weights": train_meta.get("init_weights"),  # fine-tuned from these (None: random init)
        },
        "validation": train_meta["validation"],
        "test_metrics": _test_metrics(json.loads(Path(metrics).read_text())) if metrics else None,
        "notes": notes,
    }
    (dest.parent / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def render_card(weights: CDINetWeights = CDINetWeights.DEFAULT) -> str:
    """Markdown model card of a registry entry, from its ``meta`` alone."""
    m = weights.meta
    t, tr = m["test_metrics"] or {}, m["training"]
    r = m["recipe"]
    lines = [
        f"# Model card: `{weights.id}` ({m['name']})",
        "",
        "Generated by `python -m cdi_beamline.models.card` from the registry's meta; do not edit by hand.",
        "",
        f"- **Architecture**: {m['architecture']} — {m['num_params']:,} parameters",
        f"- **File**: `cdi_beamline/models/weights/{m['file']}`, {m['file_bytes'] / 1e6:.2f} MB, sha256 `{m['sha256']}` "
        "(checked at every load)",
        f"- **Input**: the 64×64 modulus √I, centred, any photon scale; normalisation {m['input_normalisation']}",
        f"- **Output**: {m['output']}",
        f"- **Support for refinement**: predicted amplitude ≥ {m['support_threshold']} × its maximum",
        "",
        "## Training",
        "",
        f"- Recipe `{r['name']}`: loss `{r['loss']}` λ={tuple(r['loss_weights'])}, {r['optimizer']} lr {r['lr']} "
        f"({r['schedule']}), batch {r['batch_size']}, data `{r['data']}` (fresh simulated patterns, each chunk "
        f"used {r['data_reuse']}× under the square's symmetries)",
        f"- {tr['steps']:,} steps, {tr['samples_seen']:,} samples seen ({tr['samples_seen'] // r['data_reuse']:,} "
        f"distinct simulated patterns), {tr['training_time_s'] / 60:.1f} min; stopped: {tr['stopped']}; best "
        f"validation at step {tr['best_step']}",
        *(
            [
                f"- Fine-tuned from `{tr['init_weights']['id']}` (sha256 `{tr['init_weights']['sha256'][:16]}…`); "
                "the numbers here are this stage's, see the notes for the whole lineage"
            ]
            if tr.get("init_weights")
            else []
        ),
        f"- Machine: {tr['machine']['device']}, {tr['machine']['threads']} torch thread(s), "
        f"{tr['machine']['cpu_count']} CPUs, torch {tr['machine']['torch']}, {tr['machine']['platform']}",
        f"- Generator: `SimulationConfig` defaults of the physics package (phase span "
        f"{m['generator'].get('phase_span')}, sizes a,b,c {m['generator'].get('a')}, no detector noise)",
        f"- Validation ({m['validation']['n']} patterns, seed {m['validation']['seed']}): loss "
        f"{m['validation']['total']:.4f}, modulus chi² {m['validation']['chi2_modulus']:.4f}",
        "",
    ]
    if t:
        lines += [
            f"## Test metrics ({t['n']} fresh patterns, seed {t['seed']}; `cdi-beamline evaluate`)",
            "",
            "| | this model (Gamma-fit mean / median) | paper |",
            "| --- | --- | --- |",
        ]
        for k in ("modulus", "amplitude", "phase"):
            lines.append(
                f"| CNN chi² {k} | {t[f'cnn_chi2_{k}']:.4f} / {t[f'cnn_chi2_{k}_median']:.4f} | "
                f"{PAPER[f'cnn_chi2_{k}']} |"
            )
        if "cnn_sym8_chi2_modulus" in t:
            lines.append(
                "| CNN, best of the square's 8 symmetries (`symmetries=8`), chi² modulus / amplitude / phase | "
                + " / ".join(f"{t[f'cnn_sym8_chi2_{k}']:.4f}" for k in ("modulus", "amplitude", "phase"))
                + " | — |"
            )
        lines += [
            f"| NNS chi² modulus ({t['nns_index_size']:,} references) | {t['nns_chi2_modulus']:.4f} "
            f"({t['nns_over_cnn_chi2_modulus']:.1f}× the CNN's) | {PAPER['nns_chi2_modulus']} (4× the CNN's) |",
            f"| CNN time per pattern ({t['cnn_device']}, batched) | {t['cnn_ms_per_pattern']:.2f} ms | "
            f"{PAPER['cnn_ms_per_pattern']} ms (GPU) |",
        ]
        if "aps_cnn_chi2" in t:
            lines += [
                f"| APS frame 99: CNN alone | {t['aps_cnn_chi2']:.3f} | {PAPER['aps_cnn_chi2']} (their BTO frame) |",
                f"| APS frame 99: CNN-seeded refinement | {t['aps_cnn_seeded_refined_chi2']:.4f} (random starts: median "
                f"{t['aps_random_refined_chi2_median']:.4f} of 8) | {PAPER['aps_refined_chi2']} |",
            ]
        lines += [
            "",
            "Refinement (ER/HIO + shrink-wrap, 600 it) from four starts, final chi²:",
            "",
            "| start | mean | median | worst decile |",
            "| --- | --- | --- | --- |",
        ]
        for k, v in t["refinement"].items():
            if isinstance(v, dict):
                lines.append(
                    f"| {k} | {v['final_mean']:.4f} | {v['final_median']:.4f} | {v['final_worst_decile']:.4f} |"
                )
        lines.append("")
    lines += ["## Notes", "", m["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cdi_beamline.models.card", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("ship", help="copy a training output into the package with its card")
    s.add_argument("run_dir")
    s.add_argument("name")
    s.add_argument("--metrics", help="metrics.json of `cdi-beamline evaluate`")
    s.add_argument("--notes", default="", help="honest notes for the card")
    args = p.parse_args(argv)
    if args.cmd == "ship":
        card = ship(args.run_dir, args.name, args.metrics, args.notes)
        print(f'{args.name}: sha256="{card["sha256"]}" — put it in CDINetWeights, then rerun without arguments')
        return 0
    CARD_PATH.write_text(render_card())
    print(f"wrote {CARD_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
