"""Overhead of the governed plant over a bare PyTorch AdamW loop, measured in one process.

Both loops train the same preset from the same initial weights on the same seeded batches, with the same
AdamW hyperparameters and param groups (decay on matrices only) and the same LR schedule. The bare loop
does nothing else: no telemetry, no skip logic, no LR scaling. ``Plant.step`` adds the governed step
(gradient norm, finiteness check, z-scores, the kept copy of θ for ‖Δθ‖/‖θ‖, LR scale, the record).

The two loops run interleaved in blocks (after a warm-up of each), alternating which goes first, so that
drift in the machine's load hits both equally. Reported: the median over rounds of the per-round ratio of
mean step times (trainer / bare), in wall time and in process CPU time (which neighbours on a shared machine
disturb far less), median step time and tokens/s of each, and the process's peak RSS.
``--mode trainer`` or ``--mode bare`` times one loop alone (for its own peak RSS). ``--breakdown`` then
times the parts of the governed step in CPU time (:func:`breakdown`): the gradient norm, keeping θ, the AdamW
step, ``zero_grad``, ‖θ‖ and ‖Δθ‖, and the rest; governance is the governed step minus AdamW and ``zero_grad``.

    python benchmarks/overhead.py --preset qwen2-tiny --vocab-size 2048 --seq-len 64 --batch-size 8
    python benchmarks/overhead.py --preset qwen2-m --vocab-size 4096 --seq-len 128 --batch-size 8 --steps 10
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lbw_env.errors import exit_on_bad_input
from lbw_env.plant.config import OptimConfig, TrainerConfig, load_trainer_config
from lbw_env.plant.data import BatchStream, Corpus, load_corpus
from lbw_env.plant.models import build_model, count_parameters
from lbw_env.plant.optimizer import Control
from lbw_env.plant.trainer import Plant


def schedule(o: OptimConfig, t: int) -> float:
    """Linear warmup, then cosine to ``min_lr_ratio`` or constant: the plain schedule, without faults."""
    if o.warmup_steps and t < o.warmup_steps:
        return o.lr * (t + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (t - o.warmup_steps) / max(1, o.steps - o.warmup_steps))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class BareLoop:
    """The reference: a plain PyTorch AdamW training loop, as one would write it without lbw-env."""

    def __init__(self, cfg: TrainerConfig, corpus: Corpus) -> None:
        self.cfg = cfg
        self.model = build_model(cfg.model, corpus.vocab_size, cfg.data.seq_len, cfg.runtime.seed)
        self.model.train()
        self.device = next(self.model.parameters()).device
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, foreach=True
        )
        train = corpus.train[: cfg.data.max_train_tokens] if cfg.data.max_train_tokens else corpus.train
        self.batches = BatchStream(train, cfg.data.seq_len, cfg.data.batch_size, cfg.runtime.seed)
        self.t = 0

    def step(self) -> None:
        x = self.batches.next().to(self.device, non_blocking=True)
        lr = schedule(self.cfg.optim, self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits = self.model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.t += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(step: Callable[[], Any], n: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each of ``n`` steps (synchronised on a GPU).

    CPU time counts only this process's own work, so on a CPU shared with other jobs it is far less disturbed
    than wall time by being descheduled (cache pollution by the neighbours still shows).
    """
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def peak_rss_mib() -> float:
    """Peak resident set size of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


BREAKDOWN_PARTS = {
    "grad_norm": ("governed", "_grad_norm"),
    "save_theta": ("governed", "_save_params"),
    "adamw": ("optimizer", "step"),
    "adamw_blocks": ("blocked", "step"),
    "zero_grad": ("optimizer", "zero_grad"),
    "drop_grads": ("governed", "_drop_grads"),
    "update_norms": ("governed", "_update_norms"),
}
"""The timed parts of a governed step: (object, method). The bare loop runs AdamW and ``zero_grad`` too; the
governed step clears gradients with ``zero_grad`` or, where the optimizer keeps torch's, ``_drop_grads``. Where
the governed optimizer takes AdamW's step by blocks inside the measurement (:mod:`lbw_env.plant.blocked`), the
blocks are summed as ``adamw`` and taken out of ``update_norms``."""


def breakdown(trainer: Plant, n: int) -> dict[str, float]:
    """Median process-CPU microseconds per step of the whole ``Plant.step``, of ``GovernedOptimizer.step`` and of
    its parts (:data:`BREAKDOWN_PARTS`, each summed over its calls within a step; ``rest``: the governed step's own
    Python, the decision and the record).

    ``governed_extra_us`` is what governance adds to a bare step: the governed step minus the AdamW step and the
    clearing of gradients, which the bare loop does as well. Methods missing from the governed optimizer are left
    out (the start commit's optimizer has none of the parts: all of its governance is ``rest``).
    """
    governed, optimizer = trainer.governed, trainer.optimizer
    owners = {"governed": governed, "optimizer": optimizer, "blocked": getattr(governed, "_blocked", None)}
    times: dict[str, list[float]] = {}
    current: dict[str, float] = {}  # this step's seconds per part
    wrapped: list[tuple[object, str]] = []

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            out = fn(*args, **kwargs)
            current[label] = current.get(label, 0.0) + time.process_time() - t0
            return out

        return run

    def governed_step(inner: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            current.clear()
            out = inner(*args, **kwargs)
            if "adamw_blocks" in current:  # AdamW ran inside the measurement
                blocks = current.pop("adamw_blocks")
                current["update_norms"] -= blocks
                current["adamw"] = current.get("adamw", 0.0) + blocks
            for label, seconds in current.items():
                times.setdefault(label, []).append(seconds)
            return out

        return run

    for label, (owner, name) in [("governed", ("governed", "step")), *BREAKDOWN_PARTS.items()]:
        obj = owners[owner]
        if obj is not None and hasattr(obj, name):
            fn = timed(label, getattr(obj, name))
            setattr(obj, name, governed_step(fn) if label == "governed" else fn)
            wrapped.append((obj, name))
    try:
        _, whole = time_block(lambda: trainer.step(Control()), n, trainer.device)
    finally:
        for obj, name in wrapped:
            delattr(obj, name)
    us = {label: statistics.median(v) * 1e6 for label, v in times.items() if v}
    result = {"trainer_step_us": statistics.median(whole) * 1e6, "governed_step_us": us.pop("governed")}
    result.update({f"{label}_us": v for label, v in us.items()})
    result["rest_us"] = result["governed_step_us"] - sum(us.values())
    cleared = us.get("zero_grad", 0.0) + us.get("drop_grads", 0.0)
    result["governed_extra_us"] = result["governed_step_us"] - us.get("adamw", 0.0) - cleared
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen2-tiny", help="model preset (configs/models/<name>.yaml)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=10, help="timed blocks of each loop, interleaved")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps of each loop first")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", choices=["both", "trainer", "bare"], default="both")
    ap.add_argument("--breakdown", action="store_true", help="also time the parts of the governed step")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("overrides", nargs="*", help="further trainer key=value overrides")
    args = ap.parse_args(argv)
    for name, least in (("steps", 1), ("rounds", 1), ("warmup", 0), ("threads", 0)):
        if getattr(args, name) < least:
            ap.error(f"--{name}: expected an int >= {least}, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    total = args.warmup + args.rounds * args.steps
    cfg = load_trainer_config(
        {"model": {"preset": args.preset, "device": args.device}},
        [
            f"data.vocab_size={args.vocab_size}",
            f"data.seq_len={args.seq_len}",
            f"data.batch_size={args.batch_size}",
            f"optim.lr={args.lr}",
            f"optim.steps={total}",
            f"runtime.threads={max(args.threads, 0)}",
            *args.overrides,
        ],
    )
    corpus = load_corpus(cfg.data, cfg.runtime.cache_dir)
    loops: dict[str, Callable[[], Any]] = {}
    device = torch.device(args.device)
    params = 0
    if args.mode in ("both", "trainer"):
        trainer = Plant(cfg, corpus)
        loops["trainer"] = lambda: trainer.step(Control())
        params = count_parameters(trainer.model)
    if args.mode in ("both", "bare"):
        bare = BareLoop(cfg, corpus)
        loops["bare"] = bare.step
        params = count_parameters(bare.model)
    rss_setup = peak_rss_mib()

    for step in loops.values():
        time_block(step, args.warmup, device)
    times: dict[str, list[list[float]]] = {name: [] for name in loops}
    cpu_times: dict[str, list[list[float]]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            wall, cpu = time_block(loops[name], args.steps, device)
            times[name].append(wall)
            cpu_times[name].append(cpu)

    tokens = cfg.data.batch_size * cfg.data.seq_len
    result: dict[str, Any] = {
        "preset": args.preset,
        "parameters": params,
        "vocab_size": corpus.vocab_size,
        "seq_len": cfg.data.seq_len,
        "batch_size": cfg.data.batch_size,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    for name, blocks in times.items():
        median = statistics.median(t for block in blocks for t in block)
        result[f"{name}_median_step_ms"] = median * 1e3
        result[f"{name}_tokens_per_s"] = tokens / median
        result[f"{name}_median_cpu_ms"] = statistics.median(t for block in cpu_times[name] for t in block) * 1e3
    if len(times) == 2:
        ratios = [statistics.mean(a) / statistics.mean(b) for a, b in zip(times["trainer"], times["bare"])]
        result["ratio_median"] = statistics.median(ratios)
        result["ratio_min"], result["ratio_max"] = min(ratios), max(ratios)
        result["ratio_of_medians"] = result["trainer_median_step_ms"] / result["bare_median_step_ms"]
        cpu_ratios = [statistics.mean(a) / statistics.mean(b) for a, b in zip(cpu_times["trainer"], cpu_times["bare"])]
        result["cpu_ratio_median"] = statistics.median(cpu_ratios)
        result["cpu_ratio_min"], result["cpu_ratio_max"] = min(cpu_ratios), max(cpu_ratios)
    if args.breakdown and "trainer" in loops:
        result.update(breakdown(trainer, args.rounds * args.steps))
        if "bare" in times:
            # The governed step's own work (minus AdamW, which both loops run) relative to a bare step: an
            # estimate of the overhead that the machine's load disturbs less than the end-to-end ratio.
            result["governed_extra_fraction"] = result["governed_extra_us"] / (result["bare_median_cpu_ms"] * 1e3)
    result["peak_rss_setup_mib"] = rss_setup
    result["peak_rss_mib"] = peak_rss_mib()

    print(f"{args.preset}: {params:,} parameters, batch {cfg.data.batch_size} x seq {cfg.data.seq_len}, ", end="")
    print(f"{result['threads']} thread(s), {args.rounds} rounds x {args.steps} steps")
    for name in times:
        print(
            f"  {name:<8} median step {result[f'{name}_median_step_ms']:8.2f} ms   "
            f"{result[f'{name}_tokens_per_s']:10.0f} tokens/s   (CPU time {result[f'{name}_median_cpu_ms']:8.2f} ms)"
        )
    if "ratio_median" in result:
        print(
            f"  ratio trainer/bare: median {result['ratio_median']:.4f} "
            f"(rounds {result['ratio_min']:.4f}..{result['ratio_max']:.4f}; "
            f"ratio of median steps {result['ratio_of_medians']:.4f})"
        )
        print(
            f"  CPU-time ratio:     median {result['cpu_ratio_median']:.4f} "
            f"(rounds {result['cpu_ratio_min']:.4f}..{result['cpu_ratio_max']:.4f})"
        )
    if "governed_extra_us" in result:
        parts = [label for label in ("grad_norm", "save_theta", "update_norms", "rest") if f"{label}_us" in result]
        print(
            f"  breakdown (median CPU us per step): trainer step {result['trainer_step_us']:.0f}, governed step "
            f"{result['governed_step_us']:.0f} = AdamW {result.get('adamw_us', 0):.0f} + clearing gradients "
            f"{result.get('zero_grad_us', 0) + result.get('drop_grads_us', 0):.0f} + governance "
            f"{result['governed_extra_us']:.0f}"
            + (
                f" ({100 * result['governed_extra_fraction']:.1f} % of a bare step)"
                if "governed_extra_fraction" in result
                else ""
            )
        )
        print("    governance: " + ", ".join(f"{label} {result[f'{label}_us']:.0f}" for label in parts))
    print(f"  peak RSS {result['peak_rss_mib']:.0f} MiB (after setup {rss_setup:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    with exit_on_bad_input("overhead.py"):
        main()
