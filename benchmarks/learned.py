"""The per-step cost of the learned-radius methods, side by side with plain Adam and MARS-PGM.

    python -m benchmarks.learned                      # ResNet-50, batch 16 at 64 px, CPU
    python -m benchmarks.learned --device cuda --batch 64 --size 224
    python -m benchmarks.learned --step-only           # the optimiser step alone

One training step each (forward, backward, optimiser step and whatever the method adds) on
the same model, data and device, in interleaved rounds so that drift of the machine hits every
method alike; the table gives the median step time and its ratio to plain Adam. TPGM's
held-out batch has the training batch's size and is updated every step (``proj_freq`` 1, as
in every published command), so its ratio is the worst case.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F
from torchvision.models import resnet50

from tether.finetune.layers import layer_groups
from tether.finetune.regularizers import DistanceConstraint
from tether.finetune.regularizers._ftp import FTP
from tether.finetune.regularizers._learned import constrained_tensors
from tether.finetune.regularizers._spd import SPD
from tether.finetune.regularizers._tpgm import TPGM


Step = Callable[[], None]


def _setup(
    method: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], *, step_only: bool
) -> Step:
    """One training step of ``method`` on ``model`` (its current weights are W0); with
    ``step_only`` the gradients are computed once and a step is the optimiser's and what the
    method adds after it."""
    inputs, labels = batch
    params = list(model.parameters())
    head = list(model.get_submodule("fc").parameters())
    groups = layer_groups(model, head="fc")
    after: Callable[[], None] = lambda: None  # noqa: E731
    if method == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=1e-4)
    elif method == "adam+mars-pgm":
        optimizer = torch.optim.Adam(params, lr=1e-4)
        constraint = DistanceConstraint(
            model, norm="mars", radius=0.1, relative=True, head_radius=3.0, head="fc"
        )
        after = constraint.project_
    elif method == "ftp":
        optimizer = FTP(params, lr=1e-4, exclude=head)
    elif method == "spd":
        optimizer = SPD(params, lr=1e-4, lam=1.0, exclude=head)
    elif method == "tpgm":
        optimizer = torch.optim.Adam(params, lr=1e-4)
        tensors = constrained_tensors(model, groups, head="fc")
        tpgm = TPGM(model, [(t.param, t.layout) for t in tensors], heldout=lambda: batch)
        after = tpgm.project_
    else:
        raise ValueError(method)

    def backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()

    def step() -> None:
        if not step_only:
            backward()
        optimizer.step()
        after()

    if step_only:
        backward()
    return step


METHODS = ("adam", "adam+mars-pgm", "ftp", "spd", "tpgm")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--step-only", action="store_true", help="time the optimiser step (and projection) alone"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    batch = (
        torch.randn(args.batch, 3, args.size, args.size, device=device),
        torch.randint(0, 10, (args.batch,), device=device),
    )
    steps: dict[str, Step] = {}
    for method in args.methods:
        torch.manual_seed(0)
        model = resnet50(num_classes=10).to(device)
        steps[method] = _setup(method, model, batch, step_only=args.step_only)
        steps[method]()  # warm-up: allocations, first-step state
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for round_ in range(args.rounds):
        for method, step in steps.items():
            for _ in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[method].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    base = statistics.median(times[args.methods[0]])
    print(
        f"ResNet-50, batch {args.batch} at {args.size} px on {device} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"median of {args.rounds * args.steps} {'optimiser ' if args.step_only else ''}steps"
    )
    print(f"| method | step (ms) | ratio to {args.methods[0]} |")
    print("|---|---|---|")
    for method, values in times.items():
        median = statistics.median(values)
        print(f"| {method} | {1000 * median:.0f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
