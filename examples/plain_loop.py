"""A plain PyTorch training loop on WikiText, governed by the LBW guard or by a learned governor.

The loop is ordinary user code — a model, ``torch.optim.AdamW``, a ``LambdaLR`` warmup+cosine schedule, batches,
``loss.backward()`` — with one change: ``loop.step(loss)`` instead of ``optimizer.step()``. The governor decides
every ``decision_interval`` steps (LR scale, skip gate, rollback) within the envelope; skipped steps are true
skips; a run that diverges beyond recovery stops.

    LBW_DATA_DIR=../shared/data python examples/plain_loop.py                       # the LBW guard
    LBW_DATA_DIR=../shared/data python examples/plain_loop.py --shock               # ... through an LR shock x30
    LBW_DATA_DIR=../shared/data python examples/plain_loop.py --governor adamw      # plain AdamW, same envelope
    LBW_DATA_DIR=../shared/data python examples/plain_loop.py --governor ppo:runs/<run>/best_model.zip

``--governor ppo:<path>`` loads a Stable-Baselines3 model trained in ``LBWEnv`` (with its ``vecnormalize.pkl``
if one lies beside it). Give it the decision interval, window and envelope it was trained with
(``--governance <yaml>`` with keys ``decision_interval``, ``window``, ``envelope``, ``healthy_ratio``; the
defaults are the env's), otherwise its observation or action shape will not match. The model preset is
``qwen2-tiny`` (≈0.25 M parameters, a few seconds on one CPU core).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from lbw_env.config import load_yaml
from lbw_env.control.governance import GovernanceConfig
from lbw_env.integrations import GovernedLoop
from lbw_env.plant.config import load_trainer_config
from lbw_env.plant.data import BatchStream, eval_blocks, load_corpus
from lbw_env.plant.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--governor", default="lbw_guard", help="lbw_guard | adamw | skip_step | ppo:<model.zip> ...")
    ap.add_argument("--governance", default="", help="YAML with decision_interval / window / envelope")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--shock", action="store_true", help="multiply the LR by 30 for 16 steps a third of the way in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    # Data and model: WikiText-2 through the project's cached BPE (vocab 2048), the qwen2-tiny preset.
    cfg = load_trainer_config({"model": {"preset": "qwen2-tiny"}, "data": {"vocab_size": 2048, "seq_len": 64}})
    corpus = load_corpus(cfg.data)
    model = build_model(cfg.model, corpus.vocab_size, cfg.data.seq_len, seed=args.seed)
    batches = BatchStream(corpus.train, cfg.data.seq_len, cfg.data.batch_size, seed=args.seed)
    valid = eval_blocks(corpus.valid, cfg.data.seq_len, 32)

    # The user's optimizer and schedule. The governor scales this schedule; it never replaces AdamW.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    shock = range(args.steps // 3, args.steps // 3 + 16) if args.shock else range(0)

    def schedule(t: int) -> float:
        warm = min(1.0, (t + 1) / max(args.warmup, 1))
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t / args.steps)))
        return warm * cosine * (30.0 if t in shock else 1.0)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    governance = load_yaml(GovernanceConfig, args.governance) if args.governance else GovernanceConfig()
    loop = GovernedLoop(
        optimizer,
        args.governor,
        total_steps=args.steps,
        vocab_size=corpus.vocab_size,
        config=governance,
        params=model.parameters(),  # measure in the model's order (as the env does)
    )

    t0 = time.perf_counter()
    for step in range(args.steps):
        x = batches.next()
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        record = loop.step(loss, tokens=x[:, 1:].numel())  # instead of optimizer.step(); optimizer.zero_grad()
        scheduler.step()
        if step % 16 == 15 or record.skipped:
            m = loop.metrics()
            print(
                f"step {step:4d}  loss {record.loss:7.4f}  lr {record.lr:.2e}  lr_scale {m['governor/lr_scale']:.3f}  "
                f"{'SKIP (' + record.skip_reason + ')' if record.skipped else ''}"
            )
        if loop.history and loop.history[-1].end == step + 1 and loop.history[-1].outcome.rolled_back:
            print(f"step {step:4d}  ROLLBACK ({loop.history[-1].outcome.reason}) to the last good weights")
        if loop.terminated:
            print(f"step {step:4d}  diverged beyond what the envelope can recover: stopping")
            break

    with torch.no_grad():
        model.eval()
        logits = model(input_ids=valid[:, :-1]).logits
        valid_loss = float(F.cross_entropy(logits.flatten(0, 1).float(), valid[:, 1:].flatten()))
    skipped = sum(r.skipped for r in loop.records)
    print(
        f"\n{args.governor}: {loop.t} steps in {time.perf_counter() - t0:.1f}s, {skipped} skipped, "
        f"{loop.governance.rollbacks} rollbacks; valid ppl {math.exp(min(valid_loss, 700)):.2f}"
    )


if __name__ == "__main__":
    main()
