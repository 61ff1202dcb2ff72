"""Calibrate stress scenarios: plain AdamW (no governor, no envelope) at a list of LRs, several seeds.

Prints, per LR, the final validation perplexity (mean and range over seeds), the largest training loss and
the ratio to the reference LR's perplexity. This is how the LR-stress family's LRs were chosen:

    python benchmarks/calibrate.py --preset qwen2-s --regime finetune --lrs 1e-3 3e-3 1e-2 3e-2 1e-1 \
        --steps 300 --seeds 3 [key=value ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from lbw_env.errors import exit_on_bad_input
from lbw_env.plant.config import load_trainer_config
from lbw_env.plant.trainer import Plant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen2-s")
    ap.add_argument("--regime", default="finetune", choices=["scratch", "finetune"])
    ap.add_argument("--lrs", type=float, nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="trainer key=value overrides")
    args = ap.parse_args()
    base = {
        "model": {"preset": args.preset},
        "regime": args.regime,
        "optim": {"steps": args.steps, "warmup_steps": args.warmup, "schedule": args.schedule},
        "runtime": {"threads": args.threads},
    }
    rows = []
    for lr in args.lrs:
        ppls, maxloss, secs = [], [], []
        for seed in range(args.seeds):
            cfg = load_trainer_config(base, [f"optim.lr={lr}", f"runtime.seed={seed}", *args.overrides])
            tr = Plant(cfg)
            t0 = time.perf_counter()
            worst = 0.0
            while not tr.done:
                r = tr.step()
                worst = max(worst, r.loss if math.isfinite(r.loss) else math.inf)
            secs.append(time.perf_counter() - t0)
            ppls.append(tr.evaluate("valid").ppl)
            maxloss.append(worst)
        rows.append((lr, ppls, maxloss, secs))
        ref = statistics.mean(rows[0][1])
        print(
            f"lr={lr:<8g} ppl mean={statistics.mean(ppls):9.2f} range=[{min(ppls):.2f}, {max(ppls):.2f}]  "
            f"x ref={statistics.mean(ppls) / ref:6.2f}  max train loss={max(maxloss):6.2f}  "
            f"s/run={statistics.mean(secs):.1f}",
            flush=True,
        )


if __name__ == "__main__":
    with exit_on_bad_input("calibrate.py"):
        main()
