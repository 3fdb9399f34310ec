"""The training engine: a run's model, optimiser and EMA in the run's layout, and one step.

Training, the benchmark, sampling and the replay of a stability capsule all build the model
here, so a run's layout (device, memory format, precision flags) is written once, and the
benchmark times the very step that training takes. The step is the paper's (Glow, section 5):
Adam (or Adamax) on the mean bits per dimension of a batch, with the gradient norm clipped
and, when ``train.ema_decay`` is set, Polyak averaging of the weights for evaluation.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from glow_repro.core.config import RunConfig, TrainConfig
from glow_repro.core.datasets import label_names
from glow_repro.core.model import Glow, memory_format
from glow_repro.core.objectives import objective_for
from glow_repro.run.allocator import retain_freed_memory
from glow_repro.run.distributed import DistContext
from glow_repro.run.stability import StabilityMonitor


@contextlib.contextmanager
def numerics(train: TrainConfig) -> Iterator[None]:
    """CUDA's float32 arithmetic as the run's config says, both ways, while a run lasts.

    ``train.tf32`` switches TF32 on or off for matrix products and cuDNN convolutions alike
    (PyTorch leaves cuDNN's TF32 on by default, so float32 means switching it off), and
    ``train.deterministic`` asks cuDNN for deterministic algorithms. The process's settings
    come back afterwards, so runs in one process (tests, the ``inprocess`` launcher) do not
    inherit each other's. None of these flags changes arithmetic on the CPU.
    """
    wanted = (
        (torch.backends.cuda.matmul, "allow_tf32", train.tf32),
        (torch.backends.cudnn, "allow_tf32", train.tf32),
        (torch.backends.cudnn, "deterministic", train.deterministic),
    )
    previous = [(owner, name, getattr(owner, name)) for owner, name, _ in wanted]
    try:
        for owner, name, value in wanted:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in previous:
            setattr(owner, name, value)


class ExponentialMovingAverage(AveragedModel):
    """Polyak averaging of a model's weights (Glow, section 5): ``AveragedModel`` with its EMA
    function over parameters and buffers, updated without reading the device.

    ``AveragedModel.update_parameters`` reads its ``n_averaged`` buffer on the host twice per
    update (copy on the first, average after). Here a Python count, kept in step with that
    buffer and restored by ``load_state_dict``, takes the decision, so the buffer and the
    checkpoint format are unchanged. Floating-point tensors are averaged; integer and boolean
    buffers (a shuffle's permutation, ActNorm's flag) are copied, since rounding their
    average back to an integer can change them (at decay 0.9999, 11 becomes 10).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.updates = 0

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        averaged = itertools.chain(self.module.parameters(), self.module.buffers())
        current = itertools.chain(model.parameters(), model.buffers())
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for mean, value in zip(averaged, current, strict=True):
            mean, value = mean.detach(), value.detach()
            if self.updates == 0 or not mean.is_floating_point():
                mean.copy_(value)
            else:
                means, values = groups.setdefault((mean.device, mean.dtype), ([], []))
                means.append(mean)
                values.append(value)
        average = self.multi_avg_fn
        assert average is not None  # given in __init__
        for means, values in groups.values():  # one multi-tensor kernel per device and dtype
            average(means, values, self.n_averaged)
        self.n_averaged += 1
        self.updates += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "n_averaged" in state_dict:  # read once per load, from the loaded copy
            self.updates = int(state_dict[prefix + "n_averaged"])


def build_model(config: RunConfig, device: torch.device | str) -> Glow:
    """The run's Glow on ``device``, its weights in the run's memory format; a class-conditional
    one tells apart the classes of the run's dataset."""
    layout = memory_format(config.train.channels_last)
    classes = {"n_classes": len(label_names(config.data))} if config.model.conditioning == "class" else {}
    model = Glow(config.model, config.data.shape, **classes)
    # Module.to takes a device and a memory format together; torch's stub has no overload for it
    return model.to(device, memory_format=layout)  # type: ignore[call-overload]


def make_optimizer(config: RunConfig, model: Glow) -> torch.optim.Optimizer:
    """Adam or Adamax over the trainable parameters, updated by one multi-tensor kernel
    (fused Adam; foreach Adamax, which has no fused form) rather than one loop per tensor.
    On CUDA, Adamax keeps its step counters on the GPU (``capturable``): no host read per
    parameter, and the update can join a CUDA graph."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.train.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=config.train.lr, foreach=True, capturable=params[0].is_cuda)
    return torch.optim.Adam(params, lr=config.train.lr, fused=True)


@dataclass(frozen=True)
class StepResult:
    """One step: its bpd (the mean over data-parallel ranks), gradient norm before clipping,
    the kind of fault that kept its update from being kept (None for a good step), and the
    objective's other terms by name (:attr:`glow_repro.core.objectives.Objective.step_terms`, means
    over ranks: a class-conditional run's classifier bits, a non-finite one making the
    gradient so)."""

    loss: float
    grad_norm: float
    fault: str | None
    terms: dict[str, float] = field(default_factory=dict)


class Engine:
    """Model, optimiser and EMA of one run in its layout, seeded with ``seed`` (the run's by
    default) before the weights are drawn; ``dist`` makes the step data-parallel. Use it
    inside :func:`numerics` of the run's config, as training and the benchmark do."""

    def __init__(
        self, config: RunConfig, device: torch.device, dist: DistContext | None = None, *, seed: int | None = None
    ):
        retain_freed_memory()
        torch.manual_seed(config.seed if seed is None else seed)
        self.config, self.device = config, device
        self.dist = dist or DistContext()
        self.memory_format = memory_format(config.train.channels_last)
        self.model = build_model(config, device)
        self.model.grad_checkpointing = config.train.grad_checkpointing
        self.forward: Callable[..., Any] = self.model  # see wrap
        self.parameters = list(self.model.parameters())  # walked once, not once per step
        self.optimizer = make_optimizer(config, self.model)
        self.objective = objective_for(config)
        decay = config.train.ema_decay
        self.ema = ExponentialMovingAverage(self.model, decay) if decay else None

    @property
    def eval_model(self) -> Glow:
        """The weights evaluations and samples use: the EMA's when the run keeps one."""
        # AveragedModel types its copy as a plain Module; it is a deep copy of the Glow
        return cast(Glow, self.ema.module) if self.ema is not None else self.model

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, memory_format=self.memory_format)

    def initialise(self, x: torch.Tensor) -> None:
        """Data-dependent init of every ActNorm from the batch ``x`` (Glow, section 3.1)."""
        self.model.train()
        with torch.no_grad():
            self.model(self.to_device(x))
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())

    def wrap(self) -> None:
        """DDP (which broadcasts rank 0's initialised state) and torch.compile, once the
        ActNorms hold their data-dependent values; both share the model's parameters."""
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # the buffers (ActNorm flags, LU masks) are constant once initialised: no
            # broadcast of them before every forward
            self.forward = DistributedDataParallel(self.model, device_ids=device_ids, broadcast_buffers=False)
        mode = self.config.train.compile
        if mode:
            self.forward = torch.compile(self.forward, mode=None if mode is True else mode)

    def step(
        self, x: torch.Tensor, lr: float, monitor: StabilityMonitor | None = None, y: torch.Tensor | None = None
    ) -> StepResult:
        """One optimisation step of the run's objective on the device batch ``x`` (with the
        labels ``y`` the objective reads, e.g. a class-conditional run's) at learning rate ``lr``.

        The update is not applied when the loss or the gradient is non-finite or the bpd is
        above ``monitor.max_bpd``; with a ``monitor``, parameters made non-finite by the
        update are reported too (the EMA then keeps its last good weights).
        """
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective.loss(self.forward, x, y)
        loss.minimised.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, cfg.train.grad_clip or math.inf, foreach=True)
        # the one read of the step: the bpd and the objective's other terms summed over ranks,
        # so every rank takes the same branch, and the gradient norm, in float64 (exact for
        # float32 values)
        logged = [loss.bpd, *loss.terms]
        totals = self.dist.total(torch.stack([value.detach().double() for value in logged]))
        *sums, norm = torch.cat([totals, grad_norm.detach().double().reshape(1)]).tolist()
        mean_loss, *term_means = (value / self.dist.world_size for value in sums)
        terms = dict(zip(self.objective.step_terms, term_means, strict=True))
        fault = None if math.isfinite(mean_loss) else "nonfinite_loss"
        fault = fault or (None if math.isfinite(norm) else "nonfinite_gradient")
        fault = fault or (None if mean_loss <= cfg.monitor.max_bpd else "bpd_explosion")
        if fault is None:
            self.optimizer.step()
            if monitor is not None and not monitor.parameters_finite():
                fault = "nonfinite_parameters"
            elif self.ema is not None:
                self.ema.update_parameters(self.model)
        return StepResult(mean_loss, norm, fault, terms)

    def state_dict(self) -> dict[str, Any]:
        """The weights and optimiser state a checkpoint holds."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint, also one written on another kind of device: the optimiser
        keeps this engine's ``capturable`` and its step counters move to match."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        capturable = self.optimizer.defaults.get("capturable", False)
        for group in self.optimizer.param_groups:
            group["capturable"] = capturable
        for param, param_state in self.optimizer.state.items():
            if "step" in param_state:
                param_state["step"] = param_state["step"].to(param.device if capturable else "cpu")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
