"""A Hugging Face ``transformers.Trainer`` run on WikiText, governed by the LBW guard or by a learned governor.

``GovernedTrainer`` is ``transformers.Trainer`` plus a governor on its optimizer steps: telemetry and true skips
through the same ``GovernedOptimizer`` as the env, decisions through the same ``Governance``. Everything else —
``TrainingArguments``, the AdamW and the cosine schedule the ``Trainer`` builds, logging — is stock.
(``max_grad_norm`` is taken over: the governed step clips after measuring the unclipped norm.)

    LBW_DATA_DIR=../shared/data python examples/hf_trainer.py                         # the LBW guard
    LBW_DATA_DIR=../shared/data python examples/hf_trainer.py --shock                 # ... through an LR shock x30
    LBW_DATA_DIR=../shared/data python examples/hf_trainer.py --governor adamw
    LBW_DATA_DIR=../shared/data python examples/hf_trainer.py --governor ppo:runs/<run>/best_model

Without ``--governance`` the governor runs with the defaults, the evaluation suites' settings (or with its own
training settings, if it carries them). ``--governor ppo:<path>``: a Stable-Baselines3 model trained in
``LBWEnv``, from its governor folder (``runs/<run>/best_model``; an SB3 ``.zip`` only with ``--trust-pickle``,
since unpickling runs any code the file holds); if it does not carry its training settings, pass the decision
interval, window and envelope it was trained with via ``--governance <yaml>`` (keys of ``GovernanceConfig``).
With ``--shock`` the script hands the ``Trainer`` its own AdamW and a schedule with the shock
(``optimizers=(optimizer, scheduler)``); the ``Trainer``'s own optimizer is governed the same way.
"""

from __future__ import annotations

import math
import tempfile

import torch
from example_setup import governance, governor_factory, parse_args, shock_range, tiny_setup, valid_ppl
from transformers import TrainingArguments

from lbw_env.integrations.hf import GovernedTrainer, PlantBlocks


def main() -> None:
    args = parse_args(__doc__)
    setup = tiny_setup(args.seed)
    cfg, corpus, model = setup.cfg, setup.corpus, setup.model
    # Rows of seq_len inputs predicting seq_len targets, in the plant's seeded batch order.
    train = PlantBlocks(corpus.train, cfg.data.seq_len, cfg.data.batch_size, seed=args.seed)

    optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LRScheduler | None] = (None, None)
    if args.shock:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
        shock = shock_range(args)

        def schedule(t: int) -> float:
            warm = min(1.0, (t + 1) / max(args.warmup, 1))
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, t / args.steps)))
            return warm * cosine * (30.0 if t in shock else 1.0)

        optimizers = (optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=cfg.data.batch_size,
            learning_rate=args.lr,
            warmup_steps=args.warmup,
            lr_scheduler_type="cosine",
            weight_decay=0.1,
            adam_beta2=0.95,
            max_grad_norm=1.0,  # clipped inside the governed step, after the governor measured the real norm
            logging_steps=16,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=args.seed,
            remove_unused_columns=False,  # PlantBlocks' shift_labels reach the model through **kwargs
            disable_tqdm=True,
        )
        trainer = GovernedTrainer(
            model=model,
            args=training_args,
            train_dataset=train,
            optimizers=optimizers,
            governor=args.governor,
            make_governor=governor_factory(args),  # builds the --governor spec (pickles only with --trust-pickle)
            governance=governance(args),
        )
        trainer.train()

    loop = trainer.lbw
    assert loop is not None
    skipped = sum(r.skipped for r in loop.records)
    print(
        f"\n{args.governor}: {loop.t} steps, {skipped} skipped, {loop.governance.rollbacks} rollbacks, "
        f"final LR scale {loop.governance.lr_scale:.3f}; valid ppl {valid_ppl(setup):.2f}"
    )


if __name__ == "__main__":
    main()
