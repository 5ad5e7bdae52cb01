"""Mixed precision: which arithmetic each device computes fast, autocast and the fp16 scaler.

``TrainSettings.precision`` names what a run asks for ("auto", "fp32", "bf16", "fp16");
``plan(precision, device)`` turns it into what runs on that device (a ``Plan``), or refuses it
before anything changes. Mixed precision here is autocast (Micikevicius et al. 2018): the
weights, the adapter's gradients, the optimizer state and the loss stay float32, and only the
matrix products run in 16 bits. Casting the model instead would lose the small updates
(lr · gradient is often below bf16's 8-bit mantissa resolution of a weight) and halve the
optimizer's precision.

- bf16 keeps fp32's exponent range, so no loss scaling is needed; on a CPU it is fast only with
  native bf16 instructions (``avx512_bf16`` or AMX), otherwise it is emulated and slower.
- fp16 has a narrow range: small gradients underflow, so the loss is multiplied by a scale
  before the backward pass (``torch.amp.GradScaler``), and steps whose gradient overflowed are
  skipped while the scale shrinks. Only on CUDA: the CPU's fp16 kernels are slow.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from dataclasses import dataclass

import torch

from .settings import PRECISIONS, check_choice

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 instructions (x86 /proc/cpuinfo)
FP16_INIT_SCALE = 2.0 ** 16                   # torch's GradScaler default
ENV_VAR = "LORAKIT_PRECISION"  # set: what "auto" means (fp32, bf16 or fp16)
MAX_SKIPPED = 10  # consecutive fp16 steps skipped for overflow before a run is stopped


@dataclass(frozen=True)
class Plan:
    """What runs: ``name`` ("fp32", "bf16" or "fp16") on ``device_type`` ("cpu", "cuda", …);
    ``init_scale`` is the gradient scaler's first scale (fp16 only)."""

    name: str
    device_type: str
    init_scale: float = FP16_INIT_SCALE

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self, fp32_attention: bool = True):
        """The context the forward pass runs in (nothing for fp32). On the CPU, attention
        (``scaled_dot_product_attention``) stays fp32 inside it: torch's CPU bf16 attention is
        several times slower than its fp32 one (backward included), while the projections
        around it are where bf16 pays. ``fp32_attention=False`` leaves attention to autocast:
        needed under gradient checkpointing, whose recomputation in the backward pass restores
        autocast but not this function mode (it would then refuse the mismatched tensors)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device_type, dtype=self.dtype))
        if self.device_type == "cpu" and fp32_attention:
            stack.enter_context(Fp32Attention(self.dtype))
        return stack

    def scaler(self):
        """A ``torch.amp.GradScaler`` for fp16, None otherwise."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type, init_scale=self.init_scale)


class FrozenBf16:
    """bf16 copies of a model's frozen float32 ``nn.Linear`` weights, swapped in for a step.

    Autocast casts every weight to bf16 again at each forward pass: it caches the casts of
    trainable leaves only. Frozen weights are most of a LoRA model, so a CPU step spends a sixth
    of its time re-casting them. Here each is cast once per run (the same round-to-nearest-even
    as autocast's, so the arithmetic is bit for bit the same) and ``with frozen:`` points the
    parameters at their copies for the step's forward and backward passes, then back at the
    float32 tensors (the same objects: nothing is lost on an error mid-step).

    Left out (autocast casts them as before): trainable weights, tensors shared with a module
    that is not a Linear (a tied embedding's lookup would change dtype), DoRA's base layers (its
    magnitude reads the base weight), 4-bit and other non-float32 weights, every weight on a
    device other than the CPU or under another precision than bf16, and all of them when the
    copies would exceed ``max_bytes``."""

    def __init__(self, model: torch.nn.Module, plan: Plan, max_bytes: int = 2 ** 30):
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        if plan.name != "bf16" or plan.device_type != "cpu":
            return
        weights = frozen_linear_weights(model)
        if 2 * sum(w.numel() for w in weights) > max_bytes:
            return
        self.pairs = [(w, w.data, w.data.to(torch.bfloat16)) for w in weights]

    def __enter__(self):
        for param, _, low in self.pairs:
            param.data = low
        return self

    def __exit__(self, *exc) -> None:
        for param, full, _ in self.pairs:
            param.data = full


def frozen_linear_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The frozen float32 CPU weights of plain ``nn.Linear`` modules that no other kind of
    module shares and no DoRA layer reads (``FrozenBf16``'s candidates), each once."""
    linear = torch.nn.Linear
    dora_bases = {id(m.base_layer) for m in model.modules()
                  if any(getattr(m, "use_dora", {}).values()) and hasattr(m, "base_layer")}
    shared = {p.data_ptr() for m in model.modules() if type(m) is not linear
              for p in m.parameters(recurse=False)}
    found: dict[int, torch.nn.Parameter] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if (type(m) is linear and type(w) is torch.nn.Parameter and not w.requires_grad
                and w.dtype == torch.float32 and w.device.type == "cpu"
                and id(m) not in dora_bases and w.data_ptr() not in shared):
            found.setdefault(id(w), w)
    return list(found.values())


class Fp32Attention(torch.overrides.TorchFunctionMode):
    """Within it, ``F.scaled_dot_product_attention`` runs in fp32 with autocast off, its
    floating inputs upcast and its output cast to ``dtype`` (the autocast dtype around it, as
    autocast's own attention would return). Thread-local, as every torch function mode."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query = args[0] if args else kwargs["query"]

        def up(x):
            return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        with torch.autocast(query.device.type, enabled=False):
            out = func(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
        return out.to(self.dtype)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (``avx512_bf16`` or AMX), which
    oneDNN uses for bf16 products (about 2× the fp32 rate); checked once per process."""
    return bool(set(CPU_BF16_FLAGS) & cpu_flags())


@functools.cache
def cpu_bf16_ratio(n: int = 512, reps: int = 5) -> float:
    """Measured ``torch.mm`` time in bf16 over fp32 on this CPU (an ``n``×``n`` product, best of
    ``reps``): above 1 means bf16 is slower. Measured once per process (tens of ms)."""
    def best(dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)


def cuda_has_bf16(device: str | torch.device = "cuda") -> bool:
    """True when the CUDA card computes bf16 natively: compute capability 8.0 or more (A100,
    L4, RTX 30xx and later). ``torch.cuda.is_bf16_supported()`` is not this test: recent torch
    also answers True on older cards (T4, V100) where bf16 is only emulated, slowly. On ROCm,
    torch's own answer."""
    if torch.version.hip:
        return bool(torch.cuda.is_bf16_supported())
    return torch.cuda.get_device_capability(device)[0] >= 8


def fast_precision(device: str | torch.device) -> str:
    """What "auto" picks on ``device``: "bf16", "fp16" or "fp32". The environment variable
    ``LORAKIT_PRECISION`` ("fp32", "bf16" or "fp16"), when set, is what "auto" means instead,
    in this process and the ones it starts (notebook kernels, tests): e.g. ``fp32`` to reproduce
    a run made before mixed precision, or to time a whole test suite both ways."""
    forced = os.environ.get(ENV_VAR, "")
    if forced:
        check_choice(ENV_VAR, forced, tuple(DTYPES))
        return forced
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return "bf16" if cuda_has_bf16(device) else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def fast_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype "auto" computes in on ``device`` (see ``fast_precision``)."""
    return DTYPES[fast_precision(device)]


def plan(precision: str, device: str | torch.device) -> Plan:
    """What ``precision`` runs as on ``device``; ValueError before anything changes when the
    device cannot run it (a warning when bf16 on a CPU without native bf16 will be slower)."""
    check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    name = fast_precision(device) if precision == "auto" else precision
    if name == "fp32":
        return Plan("fp32", device.type)
    if device.type == "cpu":
        if name == "fp16":
            raise ValueError(
                "precision='fp16' is not offered on the CPU: torch's CPU float16 products are "
                "slow and fp16's narrow range needs a gradient scaler; use 'bf16' (16 bits with "
                "fp32's range, no scaler), 'fp32' or 'auto'")
        if not cpu_has_fast_bf16():
            warnings.warn(
                f"precision='bf16' on a CPU without native bf16 instructions "
                f"({' or '.join(CPU_BF16_FLAGS)}): bf16 is emulated here, a matrix product takes "
                f"{cpu_bf16_ratio():.1f}× its fp32 time; 'auto' would pick fp32", stacklevel=3)
        return Plan(name, "cpu")
    if device.type == "cuda":
        if name == "bf16" and not cuda_has_bf16(device):
            raise ValueError(
                f"precision='bf16' is not supported on {torch.cuda.get_device_name(device)} "
                f"(cuda): it has no bfloat16 arithmetic; choose 'fp16' (with a gradient scaler), "
                f"'fp32' or 'auto' (picks fp16 here)")
        return Plan(name, "cuda")
    raise ValueError(
        f"precision={precision!r} is not supported on device {str(device)!r}: lorakit runs "
        f"bf16/fp16 on the CPU and CUDA only; choose 'fp32' or 'auto' (fp32 here)")


__all__ = ["CPU_BF16_FLAGS", "DTYPES", "ENV_VAR", "FP16_INIT_SCALE", "FrozenBf16", "Fp32Attention",
           "MAX_SKIPPED", "Plan", "cpu_bf16_ratio", "cpu_flags", "cpu_has_fast_bf16", "cuda_has_bf16", "fast_dtype",
           "fast_precision", "frozen_linear_weights", "plan"]
