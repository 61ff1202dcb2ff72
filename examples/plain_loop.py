"""A plain PyTorch training loop on WikiText, governed by the LBW guard or by a learned governor.

The loop is ordinary user code — a model, ``torch.optim.AdamW``, a ``LambdaLR`` warmup+cosine schedule, batches,
``loss.backward()`` — with one change: ``loop.step(loss)`` instead of ``optimizer.step()``. The governor decides
every ``decision_interval`` steps (LR scale, skip gate, rollback) within the envelope; skipped steps are true
skips; with ``envelope.auto_rollback: true``, a run that diverges beyond recovery stops.

    LBW_DATA_DIR=../shared/data python examples/plain_loop.py                       # the LBW guard
    LBW_DATA_DIR=../shared/data python examples/plain_loop.py --shock               # ... through an LR shock x30
    LBW_DATA_DIR=../shared/data python examples/plain_loop.py --governor adamw      # plain AdamW, same envelope
    LBW_DATA_DIR=../shared/data python examples/plain_loop.py --governor ppo:runs/<run>/best_model

Without ``--governance`` the loop governs with the defaults, which are the evaluation suites' settings (decision
interval 8, window 4, rollback on the governor's request, no automatic rollback): the guard here is the guard the
suites measured. With ``--shock`` (seed 0, one thread) plain AdamW ends near valid ppl 684, the guard near 530.

``--governor ppo:<path>`` loads a Stable-Baselines3 model trained in ``LBWEnv`` from its governor folder
(``runs/<run>/best_model``: weights and observation statistics, no pickle); an SB3 ``.zip`` (+ ``.pkl``) loads
only with ``--trust-pickle``, since unpickling runs any code the file holds. A governor that carries its
training settings (``governor.settings``) is run with them; for one that does not, pass the decision interval,
window and envelope it was trained with (``--governance <yaml>`` with keys ``decision_interval``, ``window``,
``envelope``, ``healthy_ratio``), otherwise its observation or action shape will not match. The model preset is
``qwen2-tiny`` (≈0.25 M parameters, a few seconds on one CPU core).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from example_setup import governance, governor_factory, parse_args, shock_range, tiny_setup, valid_ppl

from lbw_env.integrations import GovernedLoop
from lbw_env.plant.data import BatchStream


def main() -> None:
    args = parse_args(__doc__)
    # Data and model: WikiText-2 through the project's cached BPE (vocab 2048), the qwen2-tiny preset.
    setup = tiny_setup(args.seed)
    cfg, corpus, model = setup.cfg, setup.corpus, setup.model
    batches = BatchStream(corpus.train, cfg.data.seq_len, cfg.data.batch_size, seed=args.seed)

    # The user's optimizer and schedule. The governor scales this schedule; it never replaces AdamW.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    shock = shock_range(args)

    def schedule(t: int) -> float:
        warm = min(1.0, (t + 1) / max(args.warmup, 1))
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t / args.steps)))
        return warm * cosine * (30.0 if t in shock else 1.0)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    loop = GovernedLoop(
        optimizer,
        args.governor,
        total_steps=args.steps,
        vocab_size=corpus.vocab_size,
        config=governance(args),
        params=model.parameters(),  # measure in the model's order (as the env does)
        make_governor=governor_factory(args),  # builds the --governor spec (pickles only with --trust-pickle)
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

    skipped = sum(r.skipped for r in loop.records)
    print(
        f"\n{args.governor}: {loop.t} steps in {time.perf_counter() - t0:.1f}s, {skipped} skipped, "
        f"{loop.governance.rollbacks} rollbacks; valid ppl {valid_ppl(setup):.2f}"
    )


if __name__ == "__main__":
    main()
