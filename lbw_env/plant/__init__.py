"""The plant: real language-model training that emits one :class:`~lbw_env.plant.records.StepRecord` per step.

``config`` (what to train) -> ``data`` (WikiText -> tokens -> seeded batches) and ``models`` (presets,
``from_pretrained``, LoRA) -> ``trainer.Plant.step(control)``, whose optimizer step goes through
``optimizer.GovernedOptimizer`` (telemetry, true skip, LR scale) over the optimizer ``optimizers`` builds
(AdamW, Prodigy, D-Adaptation, Schedule-Free), with ``clipping.ZClip`` as an adaptive clipper, and whose snapshots
are ``state.TrainState``.
Nothing here knows about governors, observations or rewards.
"""
