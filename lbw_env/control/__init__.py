"""Control: what a governor sees and what it may do, shared by the env and the integrations.

``features`` (telemetry -> observation rows, and their decoding), ``envelope`` (action -> bounded
:class:`~lbw_env.plant.optimizer.Control`, rollback policy), ``reward`` (reward terms), ``governance``
(the per-decision loop) and ``protocol`` (the ``Governor`` protocol, SB3's ``predict``).
"""
