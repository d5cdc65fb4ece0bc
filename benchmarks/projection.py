"""How fast is ``DistanceConstraint.project_()``? Against a per-tensor loop and the memory bound.

For each torchvision model (``weights=None``, 1000-class head ``fc``) this measures, side by
side and interleaved in one run (medians over ``--repeats`` rounds):

* **tether**: ``DistanceConstraint(model, norm=..., ...).project_()`` as configured by default;
* **naive**: the reference code's loop, one kernel chain per tensor
  (``t = W - W0; n = |t|.sum(row); W.copy_(W0 + t / max(1, n / r))``, plus the BatchNorm clip);
* **bound**: the memory traffic a projection cannot avoid, one read of ``W`` and ``W0`` and one
  write of ``W`` (``3 * itemsize * elements``), divided by the bandwidth of ``dst.copy_(src)`` on
  a buffer far larger than the last-level cache (read + write bytes, best of all rounds). The
  ``add_ bound`` uses ``a.add_(b)`` instead, which has exactly the projection's access pattern
  (read two arrays, write one of them in place) and so runs faster than a copy, whose
  destination must first be read into the cache.

Radii are tiny and every constrained weight is moved by a small constant before each timed
call (untimed, then the caches are flushed), so every row is outside its ball on every call:
the worst case, where the whole of ``W`` must be rewritten. The two results are checked
against each other once per variant. On CUDA the script also times a ResNet-101 training
step (batch 32, 224 px, AMP bf16, channels_last, Adam with amsgrad) and reports the
projection as a share of it.

Run::

    python -m benchmarks.projection --models resnet50 resnet101 --device cpu --repeats 7
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
import math
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
import torchvision

from tether.finetune.regularizers._constraint import DistanceConstraint
from tether.finetune.regularizers._constraint import Mode
from tether.finetune.regularizers._plan import DEFAULT_CPU_CHUNK
from tether.finetune.regularizers.config import Norm
from tether.testing.reference import NaiveProjection


RADIUS = 1e-3
HEAD_RADIUS = 1e-3
NUDGE = 1e-4  # added to every constrained weight before each call: >= 64 * 1e-4 > RADIUS per row

VARIANTS: dict[str, tuple[Norm, Mode]] = {
    "mars": ("mars", "rescale"),
    "mars-exact": ("mars", "exact"),
    "frob": ("frob", "rescale"),
}


class Clock:
    """Wall time of a call: ``perf_counter`` on the CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object]) -> float:
        """Seconds taken by ``fn()``, all queued device work finished."""
        self.sync()
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end)) / 1e3


class Bandwidth:
    """Best observed streaming bandwidth of ``dst.copy_(src)`` and ``dst.add_(src)``.

    The buffers are far larger than the last-level cache, so each call goes to memory. Bytes
    counted: read ``src`` + write ``dst`` for the copy, read both + write ``dst`` for ``add_``.
    """

    def __init__(self, device: torch.device, megabytes: int, clock: Clock) -> None:
        n = megabytes * (1 << 20) // 4
        self.src = torch.rand(n, device=device)
        self.dst = torch.rand(n, device=device)
        self.clock = clock
        self.copy_times: list[float] = []
        self.add_times: list[float] = []

    def measure(self) -> tuple[float, float]:
        """Seconds of one copy and one ``add_`` (recorded by :meth:`record`)."""
        copy = self.clock.time(lambda: self.dst.copy_(self.src))
        add = self.clock.time(lambda: self.dst.add_(self.src, alpha=1e-30))
        return copy, add

    def record(self, times: tuple[float, float]) -> None:
        self.copy_times.append(times[0])
        self.add_times.append(times[1])

    @property
    def copy(self) -> float:
        return 2 * 4 * self.src.numel() / min(self.copy_times)

    @property
    def add(self) -> float:
        return 3 * 4 * self.src.numel() / min(self.add_times)


def build_model(name: str, device: torch.device) -> nn.Module:
    """A torchvision classifier with random weights and a 1000-class head ``fc``."""
    factory = getattr(torchvision.models, name)
    model: nn.Module = factory(weights=None, num_classes=1000)
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        raise ValueError(f"{name} has no linear head named 'fc'")
    return model.to(device)


@dataclass
class Result:
    """One table row."""

    model: str
    variant: str
    elements: int
    bound_ms: float
    add_bound_ms: float
    tether_ms: float
    naive_ms: float
    max_diff: float

    def cells(self) -> list[str]:
        return [
            self.model,
            self.variant,
            f"{self.elements / 1e6:.1f}",
            f"{self.bound_ms:.1f}",
            f"{self.add_bound_ms:.1f}",
            f"{self.tether_ms:.1f}",
            f"{self.naive_ms:.1f}",
            f"{self.tether_ms / self.bound_ms:.2f}",
            f"{self.naive_ms / self.tether_ms:.2f}",
            f"{self.max_diff:.0e}",
        ]


HEADER = [
    "model",
    "variant",
    "constrained params (M)",
    "bound ms",
    "add_ bound ms",
    "tether ms",
    "naive ms",
    "tether/bound",
    "naive/tether",
    "max abs diff",
]


class Case:
    """A model with a Tether constraint and the naive loop on the same weights."""

    def __init__(
        self, model: nn.Module, name: str, variant: str, clock: Clock, chunk: int | None
    ) -> None:
        norm, mode = VARIANTS[variant]
        self.name, self.variant, self.clock = name, variant, clock
        self.model = model
        self.tether = DistanceConstraint(
            model,
            norm=norm,
            radius=RADIUS,
            head_radius=HEAD_RADIUS,
            head="fc",
            mode=mode,
            chunk=chunk,
        )
        self.naive = NaiveProjection(
            self.tether.targets,
            self.tether.reference,
            self.tether.radii,
            norm=norm,
            exact=mode == "exact",
            relative=False,
        )
        self.params = [t.param.detach() for t in self.tether.targets]
        self.elements = sum(p.numel() for p in self.params)
        self.itemsize = self.params[0].element_size()
        device = self.params[0].device
        self.flush = torch.empty(64 << 20, dtype=torch.uint8, device=device)
        self.times: dict[str, list[float]] = {"tether": [], "naive": []}

    def _nudge(self) -> None:
        torch._foreach_add_(self.params, NUDGE)
        if not self.clock.cuda:
            self.flush.fill_(1)  # evict the weights from the caches, as the bound assumes

    def run_round(self) -> dict[str, float]:
        """Seconds of one Tether and one naive projection, each after a fresh nudge."""
        times = {}
        for key, fn in (("tether", self.tether.project_), ("naive", self.naive.project_)):
            self._nudge()
            times[key] = self.clock.time(fn)
        return times

    def record(self, times: dict[str, float]) -> None:
        for key, value in times.items():
            self.times[key].append(value)

    def max_diff(self) -> float:
        """Largest difference between the two projections of the same perturbed weights."""
        self._nudge()
        start = [p.clone() for p in self.params]
        self.tether.project_()
        ours = [p.clone() for p in self.params]
        torch._foreach_copy_(self.params, start)
        self.naive.project_()
        return max(float((a - b).abs().max()) for a, b in zip(ours, self.params, strict=True))

    def result(self, bandwidth: Bandwidth) -> Result:
        traffic = 3 * self.itemsize * self.elements
        return Result(
            self.name,
            self.variant,
            self.elements,
            traffic / bandwidth.copy * 1e3,
            traffic / bandwidth.add * 1e3,
            statistics.median(self.times["tether"]) * 1e3,
            statistics.median(self.times["naive"]) * 1e3,
            self.max_diff(),
        )


class Quiet:
    """Whether other processes left the CPUs alone while a round ran (Linux ``/proc/stat``).

    Two OpenMP threads on two cores stall whenever another process takes one of the cores,
    which turns a 20 ms call into 100 ms; a round during which other processes used more
    than ``max_share`` of the machine's CPU time is therefore measured again.
    """

    def __init__(self, max_share: float) -> None:
        self.max_share = max_share
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cores = os.cpu_count() or 1
        self._start = (0.0, 0.0, 0.0)

    @staticmethod
    def _busy_ticks() -> float:
        try:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return math.nan
        return float(sum(values) - values[3] - values[4])  # all but idle and iowait

    @staticmethod
    def _own_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def start(self) -> None:
        self._start = (self._busy_ticks(), self._own_seconds(), time.perf_counter())

    def others_share(self) -> float:
        """Share of the CPU time since :meth:`start` used by other processes (0 if unknown)."""
        busy, own, wall = self._start
        others = (self._busy_ticks() - busy) / self.hz - (self._own_seconds() - own)
        share = others / max((time.perf_counter() - wall) * self.cores, 1e-9)
        return 0.0 if math.isnan(share) else share

    def ok(self) -> bool:
        return self.others_share() <= self.max_share


def benchmark(
    names: Sequence[str],
    variants: Sequence[str],
    device: torch.device,
    repeats: int,
    megabytes: int,
    quiet: Quiet,
    chunk: int | None = None,
) -> tuple[list[Result], Bandwidth, list[str]]:
    """Time every (model, variant), each round interleaving all of them and the bandwidth.

    Rounds disturbed by other processes are dropped (at most ``20 * repeats`` tries).
    Returns the results, the bandwidth and one line per model on the rounds kept.
    """
    clock = Clock(device)
    bandwidth = Bandwidth(device, megabytes, clock)
    results: list[Result] = []
    notes: list[str] = []
    for name in names:
        model = build_model(name, device)
        cases = [Case(model, name, v, clock, chunk) for v in variants]
        for _ in range(2):  # warm-up: first touches, lazy inits
            bandwidth.measure()
            for case in cases:
                case.run_round()
        kept: list[tuple[tuple[float, float], list[dict[str, float]]]] = []
        noisy: list[tuple[tuple[float, float], list[dict[str, float]]]] = []
        while len(kept) < repeats and len(kept) + len(noisy) < 20 * repeats:
            quiet.start()
            measured = bandwidth.measure(), [case.run_round() for case in cases]
            (kept if device.type != "cpu" or quiet.ok() else noisy).append(measured)
        notes.append(f"{name}: {len(kept)} quiet rounds of {len(kept) + len(noisy)}")
        for copies, rounds in kept or noisy[-repeats:]:
            bandwidth.record(copies)
            for case, times in zip(cases, rounds, strict=True):
                case.record(times)
        results.extend(case.result(bandwidth) for case in cases)
        del cases, model
    return results, bandwidth, notes


def floor(elements: int, repeats: int, quiet: Quiet, chunk: int) -> dict[str, float]:
    """Where the CPU time goes: Tether's op sequence on synthetic chunks, medians in ms.

    ``W`` and ``W0`` hold ``elements`` floats, cut into ``[R, 1024]`` chunks of ``chunk``
    elements. ``stream``: step 1 alone, ``t = W - W0`` chunk after chunk (the read of W and
    W0 from memory); ``sequence``: every step of a projection, chunk after chunk (memory
    traffic plus compute, without the per-tensor bookkeeping of a real model); ``cached``: the
    same sequence repeated on one chunk that stays in cache (the compute alone).
    """
    length = 1024
    rows = max(1, chunk // length)
    count = max(1, elements // (rows * length))
    w, w0 = torch.rand(count, rows, length), torch.rand(count, rows, length)
    t, norms = torch.empty(rows, length), torch.empty(rows)
    radius, one = torch.full((rows,), RADIUS), torch.ones(())
    flush = torch.empty(64 << 20, dtype=torch.uint8)

    def sequence(i: int) -> None:
        torch.sum(torch.sub(w[i], w0[i], out=t).abs_(), dim=1, out=norms)
        torch.fmin(torch.div(radius, norms, out=norms), one, out=norms)
        norms.min().item()
        torch.lerp(w0[i], w[i], norms.unsqueeze(1), out=w[i])

    def stream() -> None:
        for i in range(count):
            torch.sub(w[i], w0[i], out=t)

    def streamed() -> None:
        for i in range(count):
            sequence(i)

    def cached() -> None:
        for _ in range(count):
            sequence(0)

    cases = {"stream": stream, "sequence": streamed, "cached": cached}
    clock = Clock(torch.device("cpu"))
    kept: list[dict[str, float]] = []
    noisy: list[dict[str, float]] = []
    while len(kept) < repeats and len(kept) + len(noisy) < 20 * repeats:
        quiet.start()
        measured = {}
        for key, fn in cases.items():
            flush.fill_(1)
            measured[key] = clock.time(fn)
        (kept if quiet.ok() else noisy).append(measured)
    rounds = kept or noisy
    scale = 1e3 * elements / (count * rows * length)  # ms, for exactly ``elements``
    return {key: statistics.median(r[key] for r in rounds) * scale for key in cases}


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops that run a kernel (views and host-side reads excluded)."""

    SKIP = frozenset(
        {
            *("detach", "alias", "lift_fresh", "_local_scalar_dense", "is_nonzero"),
            *("empty", "empty_like", "empty_strided"),  # allocations, no kernel
        }
    )

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = func.overloadpacket.__name__
        if not func.is_view and name not in self.SKIP:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def launches_per_step(name: str, device: torch.device) -> tuple[int, int, Counter[str]]:
    """(ops per ``project_()``, blocks, ops by name) for ``name``'s default MARS constraint.

    On the ``meta`` device this is the accelerator path (whole blocks, no host sync) without
    needing an accelerator: each op is one kernel launch there (a ``_foreach`` op may launch
    one per few dozen tensors).
    """
    with torch.device(device):
        model = build_model(name, device)
    constraint = DistanceConstraint(
        model, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc"
    )
    counter = _OpCounter()
    with counter:
        constraint.project_()
    return sum(counter.ops.values()), len(constraint.plan.blocks), counter.ops


def training_share(
    name: str, device: torch.device, batch: int, size: int, repeats: int
) -> tuple[float, float]:
    """Median (step seconds, projection seconds) of real fine-tuning steps.

    Batch ``batch`` of ``size`` px images, autocast bf16, channels_last, Adam(amsgrad),
    followed by the default MARS projection (every row outside its tiny ball).
    """
    clock = Clock(device)
    model = build_model(name, device).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, amsgrad=True)
    constraint = DistanceConstraint(
        model, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc"
    )
    images = torch.randn(batch, 3, size, size, device=device)
    images = images.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    steps: list[float] = []
    projections: list[float] = []
    for i in range(repeats + 3):
        took = clock.time(step), clock.time(constraint.project_)
        if i >= 3:
            steps.append(took[0])
            projections.append(took[1])
    return statistics.median(steps), statistics.median(projections)


def machine(device: torch.device) -> list[str]:
    """Lines describing where the figures were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if "model name" in line]
        cpu = f"{names[0]} x {len(names)} logical CPUs" if names else cpu
    except OSError:
        pass
    lines = [
        f"- CPU: {cpu}; torch threads: {torch.get_num_threads()}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    return lines


def table(results: Sequence[Result]) -> list[str]:
    rows = [HEADER, ["---"] * len(HEADER), *(r.cells() for r in results)]
    return ["| " + " | ".join(row) + " |" for row in rows]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet101"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["mars"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--chunk", type=int, default=None, help="elements per CPU chunk (default: the plan's)"
    )
    parser.add_argument("--buffer-mb", type=int, default=400, help="bandwidth buffer size")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.02,
        help="drop CPU rounds in which other processes used more than this share of the CPUs",
    )
    parser.add_argument(
        "--train-step",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time a ResNet-101 training step too (default: on CUDA only)",
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on the CPU, also time the bare op sequence on synthetic data (see floor())",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print("\n".join(machine(device)))
    results, bandwidth, notes = benchmark(
        args.models,
        args.variants,
        device,
        args.repeats,
        args.buffer_mb,
        Quiet(args.max_others),
        args.chunk,
    )
    print(
        f"- bandwidth ({args.buffer_mb} MB buffers, best of {len(bandwidth.copy_times)}): "
        f"copy_ {bandwidth.copy / 1e9:.1f} GB/s, add_ {bandwidth.add / 1e9:.1f} GB/s"
    )
    print(f"- rounds: {'; '.join(notes)} (other processes <= {args.max_others:.0%} of the CPUs)")
    print(f"- medians of the rounds; radius {RADIUS:g} for every group, so every row is outside")
    print()
    print("\n".join(table(results)))
    print()
    if device.type == "cpu" and args.floor:
        print(
            "| model | elements (M) | W - W0 from memory ms | op sequence from memory ms "
            "| op sequence in cache ms | tether ms |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for r in results:
            if r.variant == "mars":
                chunk = args.chunk or DEFAULT_CPU_CHUNK
                f = floor(r.elements, args.repeats, Quiet(args.max_others), chunk)
                print(
                    f"| {r.model} | {r.elements / 1e6:.1f} | {f['stream']:.1f} "
                    f"| {f['sequence']:.1f} | {f['cached']:.1f} | {r.tether_ms:.1f} |"
                )
        print()
    accelerator = device if device.type != "cpu" else torch.device("meta")
    for name in args.models:
        ops, blocks, _ = launches_per_step(name, accelerator)
        where = f"on {accelerator.type} ({blocks} blocks)"
        print(f"- {name}: {ops} kernel launches per project_() {where}")
    if args.train_step or (args.train_step is None and device.type == "cuda"):
        step, projection = training_share("resnet101", device, args.batch, args.size, args.repeats)
        print(
            f"- resnet101 training step (batch {args.batch}, {args.size} px, bf16 autocast, "
            f"channels_last, Adam amsgrad): {step * 1e3:.1f} ms; projection "
            f"{projection * 1e3:.1f} ms = {100 * projection / step:.1f} % of the step"
        )
    if not all(math.isfinite(r.max_diff) and r.max_diff < 1e-5 for r in results):
        raise SystemExit("tether and the naive loop disagree (see 'max abs diff')")


if __name__ == "__main__":
    main()
