"""How noisy is the test perplexity the records report? Evaluation noise vs seed-to-seed spread.

A record's ``test_ppl`` is measured on ``data.eval_blocks`` blocks of ``seq_len`` tokens spread evenly over the
WikiText test split (``wiki.test.tokens`` of ``data.eval_dir``), not on the whole split. This script trains
plain AdamW on a scenario for several seeds and, for each trained model, measures the test perplexity on every
disjoint shift of that block pattern (subset ``j`` = the default blocks moved ``j`` blocks on; ``j = 0`` is the
default subset), and on the whole test split. It prints:

* eval sd: the standard deviation of a model's perplexity across the disjoint subsets (the noise of the
  block choice), averaged over the seeds;
* seed sd: the standard deviation across seeds of the default-subset perplexity (what the report's
  intervals are made of), and of the whole-split perplexity;
* paired eval sd: across subsets, the sd of the log-perplexity difference between two seeds' models — the
  block-choice noise left in a paired comparison, where both arms are measured on the same blocks.

If eval sd is small against seed sd, the evaluation subset is large enough: the seeds, not the blocks, make
the intervals. Measured on a busy 2-core machine (1 thread), 32 test blocks:

    scenario        seeds  test ppl  eval sd        seed sd        paired eval sd (log)  seed sd (log)  whole split
    tiny/ref          5     378.8    22.7 (6.0 %)   20.9 (5.5 %)   0.013                 0.055          6583 blocks
    tiny/ft_ref       5     201.5    12.1 (6.0 %)    3.6 (1.8 %)   0.017                 0.018          6583 blocks
    lr_stress/ref     3     178.5     8.8 (4.9 %)    1.5 (0.9 %)   0.016                 0.009          2866 blocks

For fine-tunes the block choice is as large as the seed spread, or larger, even in paired differences; eval sd
shrinks as 1/sqrt(blocks), so ~1000 test blocks would bring it under a third of the seed spread (the whole
lr_stress test split, 2866 blocks, took 68 s to evaluate with qwen2-s on one thread; 32 blocks take < 1 s).
Usage::

    LBW_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/eval_noise.py tiny/ref tiny/ft_ref --seeds 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from lbw_env.errors import exit_on_bad_input
from lbw_env.plant.data import eval_blocks
from lbw_env.plant.trainer import Plant
from lbw_env.scenarios import get_scenario


@torch.no_grad()
def block_losses(plant: Plant, blocks: torch.Tensor) -> np.ndarray:
    """Mean next-token loss (nats) of each block under the plant's current model."""
    plant.model.eval()
    out = []
    for chunk in blocks.split(64):
        x = chunk.to(plant.device)
        logits = plant.model(input_ids=x[:, :-1]).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        out.append(loss.view(x.shape[0], -1).mean(dim=1).cpu().numpy())
    plant.model.train()
    return np.concatenate(out).astype(np.float64)


def measure(name: str, seeds: int) -> dict[str, float]:
    """Train plain AdamW on scenario ``name`` for ``seeds`` seeds; the noise figures of the module docstring."""
    cfg = get_scenario(name).trainer
    plant = Plant(cfg)
    seq_len, k = cfg.data.seq_len, cfg.data.eval_blocks
    all_blocks = eval_blocks(plant.corpus.test, seq_len, 10**9)  # every block of the test split, in order
    total = len(all_blocks)
    default = np.arange(min(k, total)) * total // min(k, total)
    shifts = max(1, total // len(default))
    subsets = [default + j for j in range(shifts)]
    sub_ppl, full_ppl, default_ppl, sub_logs, eval_secs = [], [], [], [], []
    t0 = time.perf_counter()
    for seed in range(seeds):
        plant.reset(seed)
        while not plant.done:
            plant.step()
        te = time.perf_counter()
        losses = block_losses(plant, all_blocks)
        eval_secs.append(time.perf_counter() - te)
        logs = np.array([losses[s].mean() for s in subsets])
        sub_logs.append(logs)
        sub_ppl.append(np.exp(logs))
        default_ppl.append(float(np.exp(logs[0])))
        full_ppl.append(float(np.exp(losses.mean())))
        check = plant.evaluate("test").ppl  # the default subset is what records report
        assert math.isclose(check, default_ppl[-1], rel_tol=1e-3), (check, default_ppl[-1])
    pair = [np.std(sub_logs[a] - sub_logs[a + 1], ddof=1) for a in range(seeds - 1)] if shifts > 1 else [math.nan]
    return {
        "eval_blocks": len(default),
        "seq_len": seq_len,
        "test_blocks": total,
        "subsets": shifts,
        "mean_ppl": statistics.mean(default_ppl),
        "eval_sd": float(np.mean([np.std(p, ddof=1) for p in sub_ppl])) if shifts > 1 else math.nan,
        "seed_sd": statistics.stdev(default_ppl) if seeds > 1 else math.nan,
        "seed_sd_full": statistics.stdev(full_ppl) if seeds > 1 else math.nan,
        "paired_eval_sd_log": float(np.mean(pair)),
        "seed_sd_log": float(np.std(np.log(default_ppl), ddof=1)) if seeds > 1 else math.nan,
        "seconds": time.perf_counter() - t0,
        "whole_split_eval_seconds": statistics.mean(eval_secs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="+", help="scenario names, e.g. tiny/ref lr_stress/ref")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error(f"--seeds: expected an int >= 1, got {args.seeds}")
    for name in args.scenarios:
        m = measure(name, args.seeds)
        print(
            f"{name}: test ppl {m['mean_ppl']:.1f} on {m['eval_blocks']} x {m['seq_len']} tokens "
            f"({m['subsets']} disjoint subsets of the {m['test_blocks']} test blocks); "
            f"eval sd {m['eval_sd']:.2f} ({100 * m['eval_sd'] / m['mean_ppl']:.1f} %), "
            f"seed sd {m['seed_sd']:.2f} ({100 * m['seed_sd'] / m['mean_ppl']:.1f} %), "
            f"whole-split seed sd {m['seed_sd_full']:.2f}; paired: eval sd of Δlog {m['paired_eval_sd_log']:.4f} "
            f"vs seed sd of log {m['seed_sd_log']:.4f}; whole-split evaluation {m['whole_split_eval_seconds']:.1f} s; "
            f"{m['seconds']:.0f} s in all",
            flush=True,
        )


if __name__ == "__main__":
    with exit_on_bad_input("eval_noise.py"):
        main()
