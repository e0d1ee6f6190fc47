"""Training loop: simulated patterns in, checkpoints, ``model.pt`` and ``meta.json`` out.

Output folder layout::

    checkpoint.pt   latest full state (model, optimiser, schedule, step) — for --resume
    model.pt        state_dict of the model with the best validation loss
    meta.json       recipe, generator config, validation metrics, machine, time, sha256
    history.jsonl   one JSON line per log / validation event
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..device import resolve_device
from ..errors import CDIRuntimeError, CDIValueError
from .loss import cdi_loss, predicted_modulus, twin_aware_loss
from .network import CDINet
from .symmetry import dihedral

__all__ = ["train", "file_sha256", "machine_description", "Batches"]

log = logging.getLogger(__name__)

TRAIN_SEED_BASE = 10**9  # training patterns use seeds >= 1e9: never a validation/evaluation seed
CHUNK = 2048  # patterns simulated per generator call


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def machine_description(device: torch.device) -> dict[str, Any]:
    """Where training ran: platform, CPU count, torch version, device name, threads."""
    desc = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        desc["device_name"] = torch.cuda.get_device_name(device)
    return desc


def _simulator(config: TrainConfig):
    """The physics generator and its validated config (imported lazily)."""
    from ..config import SimulationConfig
    from ..physics import simulate_batch

    return simulate_batch, SimulationConfig.build(**config.simulation)


@dataclass
class Batches:
    """Deterministic training batches by step, for fresh or fixed data; resumable at any step.

    Fresh: chunks of ``CHUNK`` patterns, chunk k simulated with seed TRAIN_SEED_BASE + k,
    each used ``data_reuse`` times, pass r under the symmetry ``dihedral(·, r)`` of :mod:`.symmetry`.
    Fixed: the dataset is simulated once; each epoch is a seeded permutation.
    """

    config: TrainConfig
    device: torch.device

    def __post_init__(self):
        simulate, self.sim_config = _simulator(self.config)
        self._simulate = simulate
        cfg = self.config
        self._cache: tuple[int, Any] | None = None
        if cfg.data == "fixed":
            n_val = int(cfg.dataset_size * cfg.val_fraction)
            parts = [
                self._tensors(min(CHUNK, cfg.dataset_size - i), TRAIN_SEED_BASE + cfg.seed * 10**6 + i // CHUNK)
                for i in range(0, cfg.dataset_size, CHUNK)
            ]
            data = [torch.cat(col) for col in zip(*parts)]
            n_train = cfg.dataset_size - n_val
            self.train_data = [d[:n_train] for d in data]
            self.val_data = [d[n_train:] for d in data]
            self.steps_per_epoch = max(1, n_train // cfg.batch_size)
        else:
            self.val_data = self._tensors(cfg.val_size, cfg.val_seed)
            self.steps_per_epoch = max(1, math.ceil(cfg.samples_per_epoch / cfg.batch_size))
            # Steps per simulated chunk: CHUNK patterns, fewer for runs shorter than a chunk.
            run_steps = math.ceil(cfg.epochs * self.steps_per_epoch / cfg.data_reuse)
            self.per_chunk = max(1, min(CHUNK // cfg.batch_size, run_steps))

    def _tensors(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = self._simulate(n, self.sim_config, seed=seed, device=self.device)
        return b.modulus, b.amplitude, b.phase

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(modulus, amplitude, phase) of training step ``step``."""
        cfg = self.config
        bs = cfg.batch_size
        if cfg.data == "fixed":
            epoch, k = divmod(step, self.steps_per_epoch)
            if self._cache is None or self._cache[0] != epoch:
                g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
                self._cache = (epoch, torch.randperm(len(self.train_data[0]), generator=g).to(self.device))
            idx = self._cache[1][k * bs : (k + 1) * bs]
            return tuple(d[idx] for d in self.train_data)
        per_chunk = self.per_chunk
        chunk, k = divmod(step, per_chunk * cfg.data_reuse)
        sym, k = divmod(k, per_chunk)
        if self._cache is None or self._cache[0] != chunk:
            seed = TRAIN_SEED_BASE + cfg.seed * 10**6 + chunk
            self._cache = (chunk, self._tensors(per_chunk * bs, seed))
        m, a, p = (dihedral(d[k * bs : (k + 1) * bs], sym) for d in self._cache[1])
        return m, a, p


def _loss_fn(config: TrainConfig) -> Callable:
    fn = cdi_loss if config.loss == "paper" else twin_aware_loss
    return lambda *args, **kw: fn(*args, weights=config.loss_weights, **kw)


def _modulus_chi2(pred: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Eq. 5 with the prediction scaled by its least-squares factor, per sample (B,)."""
    p, g = pred.flatten(1), data.flatten(1)
    s = (p * g).sum(1) / p.square().sum(1).clamp_min(1e-30)
    return (s[:, None] * p - g).square().sum(1) / g.square().sum(1).clamp_min(1e-30)


@torch.no_grad()
def validate(net: CDINet, data, loss_fn: Callable, batch: int = 256) -> dict[str, float]:
    """Mean loss terms and mean modulus chi² (eq. 5) of ``net`` on (modulus, amplitude, phase)."""
    was_training = net.training
    net.eval()
    sums: dict[str, float] = {}
    n = len(data[0])
    for i in range(0, n, batch):
        m, a, p = (d[i : i + batch] for d in data)
        pa, pp = net(m)
        terms = loss_fn(pa, pp, a, p, m, reduction="none")
        terms["chi2_modulus"] = _modulus_chi2(predicted_modulus(pa, pp, m.shape[-2:]), m)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.float().sum())
    net.train(was_training)
    return {k: v / n for k, v in sums.items()}


def lr_factor(config: TrainConfig, progress: float, epoch: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run (``epoch`` = epochs done).

    onecycle: cosine warm-up from lr/25 over ``onecycle_pct_start``, then cosine decay to
    lr/1000. step: ``step_gamma ** floor(epoch / step_epochs)``. constant: 1.
    """
    if config.schedule == "onecycle":
        pct = config.onecycle_pct_start
        if progress < pct:
            return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * progress / pct)) / 2
        q = min(1.0, (progress - pct) / (1 - pct))
        return 1e-3 + (1 - 1e-3) * (1 + math.cos(math.pi * q)) / 2
    if config.schedule == "step":
        return config.step_gamma ** math.floor(epoch / config.step_epochs)
    return 1.0


def _optimizer(net: CDINet, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _recipe_key(dump: dict) -> dict:
    # What must match to resume: everything but logging intervals and CPU threads.
    skip = {"num_threads", "log_every", "eval_every", "checkpoint_every"}
    return {k: v for k, v in dump.items() if k not in skip}


def _load_init_weights(net: CDINet, config: TrainConfig) -> dict[str, str]:
    """Load ``config.init_weights`` into ``net``; their architecture must be ``config.model``.

    Returns the provenance recorded in meta.json: {"id", "sha256"}.
    """
    from .weights import cdinet

    source = cdinet(config.init_weights)
    if source.config != config.model:
        raise CDIValueError(
            f"init_weights {config.init_weights!r} are a {source.config.model_dump()} network but the recipe's "
            f"model is {config.model.model_dump()}: fine-tuning needs the same architecture"
        )
    net.load_state_dict(source.state_dict())
    return {"id": str(source.weights_id), "sha256": str(source.weights_sha256)}  # set by every load


def _load_checkpoint(path: str | Path, device: torch.device) -> dict[str, Any]:
    """A ``checkpoint.pt`` of :func:`train`: tensors and plain types only (``weights_only``).

    A file that needs anything else (a pickled object of some class, whose unpickling could run
    code) is refused, unread.
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CDIValueError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CDIValueError(f"{path}: not a checkpoint written by `cdi-beamline train` ({first[:200]})") from None
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "step", "config"} <= ckpt.keys():
        raise CDIValueError(f"{path}: not a checkpoint written by `cdi-beamline train` (keys missing)")
    return ckpt


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    device: str | torch.device = "auto",
    resume: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train a :class:`CDINet` per ``config``; write checkpoints, ``model.pt``, ``meta.json``.

    Parameters
    ----------
    config : TrainConfig
    out : folder for the outputs (created)
    device : "auto" | "cpu" | "cuda[:n]"
    resume : a ``checkpoint.pt`` to continue from (its recipe must equal ``config``)
    progress : called with each progress line (default: the module logger)
    stop_at_step : stop (checkpointed, resumable) once this many steps are done

    Returns
    -------
    dict, the content of ``meta.json``
    """
    say = progress or log.info
    dev = resolve_device(device)
    if config.num_threads and dev.type == "cpu":
        torch.set_num_threads(config.num_threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    batches = Batches(config, dev)
    total_steps = max(1, int(config.epochs * batches.steps_per_epoch))
    net = CDINet(config.model).to(dev)
    opt = _optimizer(net, config)
    loss_fn = _loss_fn(config)
    best: dict[str, Any] = {"loss": math.inf, "step": -1, "metrics": {}}
    step, elapsed0 = 0, 0.0
    init = _load_init_weights(net, config) if config.init_weights else None
    if init is not None:
        say(f"starting from weights {init['id']} (sha256 {init['sha256'][:12]}...)")
    if resume is not None:
        ckpt = _load_checkpoint(resume, dev)
        if _recipe_key(ckpt["config"]) != _recipe_key(config.model_dump(mode="json")):
            raise CDIValueError(f"{resume}: checkpoint was written by a different training config")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed0, best = ckpt["step"], ckpt["elapsed_s"], ckpt["best"]
        say(f"resumed from {resume} at step {step}")

    use_cuda = dev.type == "cuda"
    model = torch.compile(net) if (config.compile and use_cuda) else net
    bf16 = use_cuda and config.precision == "bf16"
    history = open(out / "history.jsonl", "a")

    def checkpoint() -> None:
        _atomic_save(
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed_s": elapsed0 + time.perf_counter() - t0,
                "best": best,
                "config": config.model_dump(mode="json"),
            },
            out / "checkpoint.pt",
        )

    def evaluate_now() -> None:
        metrics = validate(net, batches.val_data, loss_fn)
        history.write(json.dumps({"step": step, "val": metrics}) + "\n")
        history.flush()
        say(
            f"step {step}: validation loss {metrics['total']:.4f}, chi2 modulus {metrics['chi2_modulus']:.4f}, "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("total", "chi2_modulus"))
        )
        if metrics["total"] < best["loss"]:
            best.update(loss=metrics["total"], step=step, metrics=metrics)
            _atomic_save(net.state_dict(), out / "model.pt")

    say(
        f"training {config.name}: {net.num_params():,} parameters on {dev}, {total_steps} steps of "
        f"{config.batch_size}, loss {config.loss}, data {config.data}"
    )
    net.train()
    t0 = time.perf_counter()
    t_log, n_log = t0, 0
    budget_s = config.max_minutes * 60 if config.max_minutes else math.inf
    stopped = "completed"
    while step < total_steps:
        # With a time budget the schedule follows whichever runs out first: steps or time.
        done = max(step / total_steps, (elapsed0 + time.perf_counter() - t0) / budget_s)
        if done >= 1:
            stopped = f"time budget of {config.max_minutes} min reached"
            break
        if stop_at_step is not None and step >= stop_at_step:
            stopped = f"stopped at step {step} as asked"
            break
        lr = config.lr * lr_factor(config, done, step / batches.steps_per_epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        m, a, p = batches(step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            pa, pp = model(m)
        loss = loss_fn(pa.float(), pp.float(), a, p, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        step += 1
        n_log += len(m)
        if step % config.log_every == 0 or step == total_steps:
            if not torch.isfinite(loss):  # checked when logging: no device sync every step
                raise CDIRuntimeError(f"training diverged at step {step}: loss {loss.item()}")
            now = time.perf_counter()
            rate = n_log / (now - t_log)
            line = {
                "step": step,
                "epoch": step / batches.steps_per_epoch,
                "loss": loss.item(),
                "lr": lr,
                "samples_per_s": rate,
                "elapsed_s": elapsed0 + now - t0,
            }
            history.write(json.dumps(line) + "\n")
            history.flush()
            say(
                f"step {step}/{total_steps} epoch {line['epoch']:.2f} loss {line['loss']:.4f} "
                f"lr {line['lr']:.2e} {rate:.0f} samples/s elapsed {line['elapsed_s'] / 60:.1f} min"
            )
            t_log, n_log = now, 0
        if step % config.eval_every == 0:
            evaluate_now()
        if step % config.checkpoint_every == 0:
            checkpoint()
    if step % config.eval_every:
        evaluate_now()
    checkpoint()
    history.close()
    train_time = elapsed0 + time.perf_counter() - t0
    say(f"stopped at step {step}: {stopped}; best validation loss {best['loss']:.4f} at step {best['step']}")
    meta = {
        "name": config.name,
        "num_params": net.num_params(),
        "recipe": config.model_dump(mode="json"),
        "generator": batches.sim_config.model_dump(mode="json"),
        "init_weights": init,
        "steps": step,
        "samples_seen": step * config.batch_size,
        "stopped": stopped,
        "best_step": best["step"],
        "validation": {
            "seed": config.val_seed if config.data == "fresh" else None,
            "n": len(batches.val_data[0]),
            **best["metrics"],
        },
        "training_time_s": round(train_time, 1),
        "machine": machine_description(dev),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": file_sha256(out / "model.pt"),
        "file_bytes": (out / "model.pt").stat().st_size,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
