"""ModelConfig (the CNN of Fig. 1) and TrainConfig (training recipes).

Three documented recipes are provided as functions returning a validated
:class:`TrainConfig` (and as JSON files under ``cdi_beamline/models/recipes/``):

* :func:`paper_recipe` — Wu et al. (2021), Appendix A: SGD, lr 0.01 × 0.95 every 10
  epochs, 150 000 fixed patterns split 95/5, 200 epochs, eq. 4 loss.
* :func:`gpu_recipe` — the fast GPU recipe: AdamW + OneCycle, bf16 autocast and
  ``torch.compile`` on CUDA, fresh patterns generated on the GPU every step,
  twin-aware loss.
* :func:`cpu_recipe` — a narrower network trained on fresh patterns on a CPU for a
  fixed wall-clock budget (how the shipped weights were made, on a CPU).
* :func:`cpu_finetune_recipe` — the second CPU stage: the cpu recipe's weights trained
  further on new patterns (``init_weights``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ._base import FrozenModel

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "paper_recipe",
    "gpu_recipe",
    "cpu_recipe",
    "cpu_finetune_recipe",
    "tiny_recipe",
]


class ModelConfig(FrozenModel):
    """The encoder / twin-decoder CNN of Wu et al. (2021), Fig. 1.

    Encoder: ``depth + 1`` blocks at 64, 32, 16, 8 px (max pooling between), channel
    widths ``base_channels * 2**k``. Two decoders (amplitude, phase), each taking half of
    the encoder's last channels, upsample 8 -> 16 -> 32 with the same blocks. A block is
    3×3 conv + LReLU + BN, then 3×1 conv + 1×3 conv + LReLU + BN.
    """

    input_size: int = Field(64, ge=16, description="side of the square input modulus, px (output is half)")
    base_channels: int = Field(32, ge=4, le=256, description="channels of the first encoder block")
    depth: int = Field(3, ge=2, le=4, description="number of 2× poolings in the encoder (64 -> 8 px for 3)")
    negative_slope: float = Field(0.01, ge=0.0, lt=1.0, description="LReLU negative slope")
    amplitude_bias_init: float = Field(
        0.1, ge=0.0, description="initial bias of the amplitude head's final ReLU conv (> 0: not born dead)"
    )
    phase_activation: Literal["identity", "relu"] = Field(
        "identity",
        description="final activation of the phase head; the paper's 'relu' only suits phases >= 0, "
        "our targets are signed radians",
    )
    input_floor: float = Field(
        1e-3,
        gt=0.0,
        lt=1.0,
        description="input normalisation x = log1p(m / max(m) / floor) / log1p(1 / floor): "
        "per-pattern max (photon-scale invariant), log compresses the decades below the peak",
    )

    @model_validator(mode="after")
    def _check_size(self) -> ModelConfig:
        if self.input_size % (2**self.depth):
            raise ValueError(f"input_size {self.input_size} must be divisible by 2**depth = {2**self.depth}")
        if self.depth < 2:
            raise ValueError("depth must be >= 2 (the decoders upsample twice)")
        return self


class TrainConfig(FrozenModel):
    """A training recipe: model, data, loss, optimiser, schedule, precision, logging."""

    name: str = Field("custom", description="recipe name recorded in the model card")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    simulation: dict[str, Any] = Field(
        default_factory=dict, description="SimulationConfig fields of the training generator ({} = its defaults)"
    )
    loss: Literal["paper", "twin_aware"] = Field(
        "twin_aware",
        description="'paper' = eq. 4 as published; 'twin_aware' = global-phase-fixed targets, complex-object "
        "term, per-sample min over target and twin",
    )
    loss_weights: tuple[float, float, float] = Field((1.0, 1.0, 4.0), description="λ1, λ2, λ3 of eq. 4")
    data: Literal["fresh", "fixed"] = Field(
        "fresh", description="'fresh' = new patterns every step; 'fixed' = a dataset generated once, iterated in epochs"
    )
    dataset_size: int = Field(150_000, ge=2, description="patterns in the fixed dataset (data='fixed')")
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="validation share of the fixed dataset")
    val_size: int = Field(512, ge=1, description="validation patterns (data='fresh'; seed val_seed)")
    samples_per_epoch: int = Field(142_500, ge=1, description="patterns per epoch with data='fresh'")
    data_reuse: int = Field(
        1,
        ge=1,
        le=8,
        description="data='fresh': each simulated chunk is used this many times, each pass under another "
        "symmetry of the square (inversions, transpose; exact for the pattern too) — for slow generators",
    )
    epochs: float = Field(200, gt=0, description="epochs to train (fractional allowed)")
    batch_size: int = Field(64, ge=1, description="patterns per optimiser step")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="optimiser")
    lr: float = Field(0.01, gt=0, description="(peak) learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (the paper states none)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    schedule: Literal["step", "onecycle", "constant"] = Field("step", description="learning-rate schedule")
    step_gamma: float = Field(0.95, gt=0, le=1, description="schedule='step': factor per step_epochs")
    step_epochs: float = Field(10, gt=0, description="schedule='step': epochs between lr reductions")
    onecycle_pct_start: float = Field(0.15, gt=0, lt=1, description="schedule='onecycle': warm-up share")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm (None = no clipping)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (CUDA only; fp32 on the CPU)")
    compile: bool = Field(False, description="torch.compile the model (CUDA only)")
    init_weights: str | None = Field(
        None,
        description="start from these weights instead of a random init (fine-tuning): a shipped name such as "
        "'CPU_REDUCED_V1' or a training output folder / model.pt; their architecture must equal `model`",
    )
    seed: int = Field(0, ge=0, description="seed of weights init and training patterns")
    val_seed: int = Field(1_000_003, ge=0, description="seed of the validation patterns (never trained on)")
    max_minutes: float | None = Field(None, gt=0, description="stop gracefully after this wall-clock time")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None = torch default)")
    log_every: int = Field(50, ge=1, description="steps between progress lines")
    eval_every: int = Field(500, ge=1, description="steps between validation passes")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.data == "fixed" and int(self.dataset_size * self.val_fraction) < 1:
            raise ValueError("dataset_size * val_fraction must leave at least one validation pattern")
        if any(w < 0 for w in self.loss_weights) or sum(self.loss_weights) <= 0:
            raise ValueError(f"loss_weights must be >= 0 with a positive sum, got {self.loss_weights}")
        return self


def paper_recipe() -> TrainConfig:
    """Wu et al. (2021) Appendix A: SGD lr 0.01 × 0.95 / 10 epochs, 150k patterns 95/5, 200 epochs.

    The batch size is not stated in the paper; 64 is assumed. ~12 h on a P100 in the paper.
    """
    return TrainConfig(
        name="paper",
        model=ModelConfig(phase_activation="identity"),
        loss="paper",
        data="fixed",
        dataset_size=150_000,
        val_fraction=0.05,
        epochs=200,
        batch_size=64,
        optimizer="sgd",
        lr=0.01,
        schedule="step",
        step_gamma=0.95,
        step_epochs=10,
        log_every=500,
        eval_every=2226,
        checkpoint_every=2226,
    )


def gpu_recipe() -> TrainConfig:
    """Fast recipe for one H100: fresh GPU-made patterns each step, AdamW + OneCycle, bf16, compile.

    12M patterns (~8 min at ~26k samples/s, the measured probe rate); not run yet.
    """
    return TrainConfig(
        name="gpu-fast",
        model=ModelConfig(),
        loss="twin_aware",
        data="fresh",
        val_size=2048,
        samples_per_epoch=1_000_000,
        epochs=12,
        batch_size=512,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=1e-4,
        schedule="onecycle",
        onecycle_pct_start=0.1,
        grad_clip=1.0,
        precision="bf16",
        compile=True,
        max_minutes=8.0,
        log_every=200,
        eval_every=2000,
        checkpoint_every=2000,
    )


def cpu_recipe() -> TrainConfig:
    """The reduced-scale CPU recipe of the shipped weights: narrow net, fresh data, time-boxed."""
    return TrainConfig(
        name="cpu-reduced",
        model=ModelConfig(base_channels=16),
        loss="twin_aware",
        data="fresh",
        val_size=512,
        samples_per_epoch=25_600,
        data_reuse=4,
        epochs=100,
        batch_size=32,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=1e-4,
        schedule="onecycle",
        onecycle_pct_start=0.05,
        grad_clip=1.0,
        max_minutes=88.0,
        num_threads=1,
        log_every=50,
        eval_every=500,
        checkpoint_every=250,
    )


def cpu_finetune_recipe() -> TrainConfig:
    """Continue the CPU weights on new patterns (seed 1): the second CPU stage of the shipped model."""
    return TrainConfig.build(
        **{
            **cpu_recipe().model_dump(),
            "name": "cpu-finetune",
            "init_weights": "CPU_REDUCED_V1",
            "seed": 1,
            "batch_size": 64,
            "lr": 1e-3,
            "data_reuse": 2,
            "max_minutes": 95.0,
            "num_threads": 2,
            "eval_every": 250,
        }
    )


def tiny_recipe() -> TrainConfig:
    """A seconds-long CPU configuration for tests: 8-channel net, a few dozen steps."""
    return TrainConfig(
        name="tiny",
        model=ModelConfig(base_channels=8),
        loss="twin_aware",
        data="fresh",
        val_size=32,
        samples_per_epoch=16 * 40,
        epochs=1,
        batch_size=16,
        optimizer="adamw",
        lr=3e-3,
        schedule="constant",
        log_every=10,
        eval_every=40,
        checkpoint_every=20,
    )
