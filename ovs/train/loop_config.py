"""``LoopConfig``: the settings of the one training loop (``pipelines/loop.py``) that every
training section shares, so ``train.steps`` and ``self_train.steps`` mean the same thing.

A stage's section (``ovs.training.TrainConfig``, ``ovs.selftrain.training.SelfTrainConfig``)
derives from it and adds what only that stage has (model, data, evaluation); it redeclares a
field only to change its default. YAML keys and overrides are the fields' names, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ovs import precision
from ovs.config import check_choice


@dataclass
class LoopConfig:
    """Workers, optimiser, schedule, precision, cadence, failure restarts and the time limit
    (the failure drill is a test hook outside every config: ``pipelines/drills.py``).

    Defaults: the S-Seg+ segmenter's tiny CPU recipe; a section redeclares a field to give it
    another default.
    """

    SECTION: ClassVar[str] = "loop"  # the config key a section's validate() messages start with
    # How a loop runs, not what it computes: left out of the stage hash (ovs.config.hash_view).
    UNHASHED: ClassVar[tuple[str, ...]] = (
        "cpus_per_worker",
        "log_every",
        "checkpoint_every",
        "max_failures",
        "time_limit_s",
        "memory_budget_mb",
    )

    num_workers: int = 1  # Ray Train workers (DDP ranks)
    cpus_per_worker: int = 1  # CPUs reserved and torch threads per worker
    use_gpu: bool = False
    batch_size: int = 16  # per worker
    steps: int = 1000
    warmup_steps: int = 30  # linear warm-up of the learning rate
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # the schedule decays to lr * min_lr_ratio at ``steps``
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    # Autocast dtype (ovs.precision.training_dtype): "auto" = bf16 on CUDA, fp32 on CPU;
    # "bfloat16"/"float16" are honoured on any device; "float32" (or "") = no autocast.
    amp_dtype: str = "auto"
    log_every: int = 50  # steps between logged metric windows (and time-limit checks)
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    max_failures: int = 2  # worker-group restarts (Ray Train FailureConfig)
    # Off by default: no wall clock decides a result. When set and hit (checked at log steps,
    # agreed across ranks) the loop checkpoints and the stage ends resumable, not complete.
    time_limit_s: float | None = None
    # Memory one rank's training step may use (MiB), checked during the first step's forward
    # (ovs.train.memory: parameters, gradients, optimiser state, saved activations); a batch
    # that needs more fails naming <section>.batch_size. None: what the device has (CUDA free
    # memory; the CPU's available RAM shared by the node's ranks).
    memory_budget_mb: float | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for a value the loop cannot run with (checked
        when the config loads, before any stage writes)."""
        section = self.SECTION
        check_choice(f"{section}.amp_dtype", self.amp_dtype, precision.CHOICES)
        if self.memory_budget_mb is not None and self.memory_budget_mb <= 0:
            raise ValueError(f"{section}.memory_budget_mb must be positive or null")
        for name in ("num_workers", "cpus_per_worker", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{section}.{name} must be at least 1, got {getattr(self, name)}")
