"""``cdi-beamline train``: train the CNN on simulated patterns."""

from __future__ import annotations

import argparse

RECIPES = ("paper", "gpu", "cpu", "cpu_finetune", "tiny")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the CNN on simulated patterns (checkpoints, resume, model.pt + meta.json)",
        description="Train the CNN of Wu et al. (2021) on fresh simulated patterns. Writes DIR/checkpoint.pt "
        "(every --checkpoint-every steps), DIR/model.pt (best validation loss), DIR/meta.json (the model card: "
        "recipe, generator, validation metrics, machine, time, sha256) and DIR/history.jsonl.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="TrainConfig as JSON or YAML (see cdi_beamline/models/recipes/)")
    src.add_argument(
        "--recipe",
        choices=RECIPES,
        help="a built-in recipe: paper, gpu (fast, H100), cpu, cpu_finetune (continues the shipped CPU weights), tiny",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:n] (default auto)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint.pt written by the same config")
    p.add_argument("--max-minutes", type=float, help="override the recipe's wall-clock budget")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides the recipe)")
    p.add_argument(
        "--init-weights",
        metavar="W",
        help="fine-tune: start from these weights (DEFAULT, a registry name, or a training output folder) "
        "instead of a random init; the architecture must match the recipe's (overrides the recipe)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import TrainConfig, load_config
    from ..config import model as recipes
    from ..models.training import train

    overrides = {"max_minutes": args.max_minutes, "num_threads": args.threads, "init_weights": args.init_weights}
    if args.config:
        config = load_config(TrainConfig, args.config, **overrides)
    else:
        base = getattr(recipes, f"{args.recipe}_recipe")()
        config = TrainConfig.build(**{**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    meta = train(config, args.out, device=args.device, resume=args.resume, progress=lambda s: print(s, flush=True))
    v = meta["validation"]
    print(
        f"wrote {args.out}/model.pt ({meta['num_params']:,} parameters, sha256 {meta['sha256'][:12]}…): "
        f"validation loss {v['total']:.4f}, chi2 modulus {v['chi2_modulus']:.4f} on {v['n']} patterns"
    )
    return 0
