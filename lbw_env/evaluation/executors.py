"""Executors: run a plan's tasks in this process, in a process pool, or on Ray; all give the same records.

* ``local`` — in this process, one task after another;
* ``process`` — a ``multiprocessing`` pool (forkserver, or spawn where there is none) of ``workers``
  processes, each with ``max(1, cores // workers)`` torch threads, reusing its envs across tasks;
* ``ray`` — one Ray actor per worker on a fresh local Ray instance (optional extra ``lbw-env[ray]``).

They agree (timing and host fields aside) because an episode is deterministic given its scenario, seed and
governor. Each yields records as they finish, in any order; only the parent process writes them (see
:mod:`.run`). The governor factory travels to the workers by pickle, which is why it must be a module-level
function.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import multiprocessing as mp
import os
import platform
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from ..config import ConfigError
from ..control.protocol import Governor, GovernorFactory
from .episode import run_episode
from .suite import Arm, SuiteConfig, Task, import_modules, make_arm_governor, task_hash

if TYPE_CHECKING:  # ray is optional and imported only when the ray executor runs
    from ray.actor import ActorHandle

Executor = Literal["local", "process", "ray"]


class Runner:
    """Runs tasks of one suite in the current process, reusing envs (one per arm's trainer overrides, holding
    a trainer per scenario and the cached initial states) and governors across tasks."""

    MAX_ENVS = 4
    """Envs kept alive at once (each holds a model per scenario it has run)."""

    def __init__(self, suite: SuiteConfig, make_governor: GovernorFactory, executor: str = "local") -> None:
        import_modules(suite.imports)
        self.suite = suite
        self.make_governor = make_governor
        self.executor = executor
        self._envs: dict[tuple[str, ...], Any] = {}
        self._governors: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Governor] = {}

    def _env(self, arm: Arm) -> Any:
        # Imported on first use: lbw_env.env loads torch, which the parent of a process pool never needs.
        from ..env import LBWEnv

        key = (*arm.trainer_overrides, "|env|", *arm.env_overrides)
        env = self._envs.pop(key, None)
        if env is None:
            env = LBWEnv(self.suite.arm_env(arm))
            while len(self._envs) >= self.MAX_ENVS:
                self._envs.pop(next(iter(self._envs))).close()
        self._envs[key] = env  # most recently used last
        return env

    def run(self, task: Task) -> dict[str, Any]:
        """Run one task; its record, stamped with the config hash and the host that ran it."""
        env = self._env(task.arm)
        gkey = (task.arm.governor, tuple(task.arm.trainer_overrides), tuple(task.arm.env_overrides))
        if gkey not in self._governors:
            self._governors[gkey] = make_arm_governor(task.arm, env.unwrapped.cfg.envelope, self.make_governor)
        record = run_episode(
            env,
            self._governors[gkey],
            task.scenario,
            task.seed,
            self.suite.eval_every,
            suite=self.suite.name,
            arm=task.arm.label,
            governor_spec=task.arm.governor,
        )
        record["config_hash"] = task_hash(env.unwrapped.cfg, task.arm, env.unwrapped.scenario.trainer,
                                          self.suite.eval_every)  # fmt: skip
        import torch  # loaded by the env already

        record["host"] = {
            "executor": self.executor,
            "pid": os.getpid(),
            "hostname": platform.node(),
            "torch_threads": torch.get_num_threads(),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return record


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process or actor needs to build its :class:`Runner` (pickled to it)."""

    suite: SuiteConfig
    make_governor: GovernorFactory
    """A module-level function, so that pickle sends it by reference."""
    threads: int
    """Torch threads per worker: the cores shared out, so workers do not oversubscribe them."""
    sys_path: list[str]
    """The parent's module path: a suite's ``imports`` and the factory's module must resolve the same."""
    environ: dict[str, str]
    """The parent's ``LBW_*`` variables (data and cache roots), roots made absolute: a Ray worker does not
    start in the parent's working directory, so a relative ``LBW_DATA_DIR`` would point elsewhere there."""

    @classmethod
    def of(cls, suite: SuiteConfig, make_governor: GovernorFactory, workers: int) -> WorkerSpec:
        threads = max(1, available_cores() // workers)
        environ = {k: v for k, v in os.environ.items() if k.startswith("LBW_")}
        for key in ("LBW_DATA_DIR", "LBW_CACHE"):
            if environ.get(key, "").strip():
                environ[key] = str(Path(environ[key]).expanduser().resolve())
        return cls(suite, make_governor, threads, list(sys.path), environ)

    def runner(self, executor: str) -> Runner:
        """Set up this process like the parent, then build the runner."""
        for p in reversed(self.sys_path):
            if p not in sys.path:
                sys.path.insert(0, p)
        os.environ.update(self.environ)
        import torch  # a worker runs episodes: torch is needed anyway

        torch.set_num_threads(self.threads)  # a scenario's runtime.threads > 0 still wins at reset
        return Runner(self.suite, self.make_governor, executor)


TaskRunner = Callable[[SuiteConfig, list[Task], int, GovernorFactory], Iterator[dict[str, Any]]]
"""An executor: ``(suite, tasks, workers, make_governor)`` -> records as they finish, in any order."""


def _run_local(
    suite: SuiteConfig, tasks: list[Task], workers: int, make_governor: GovernorFactory
) -> Iterator[dict[str, Any]]:
    runner = Runner(suite, make_governor, "local")
    for task in tasks:
        yield runner.run(task)


_RUNNER: Runner | None = None
"""The pool worker's runner (one per worker process, set by :func:`_pool_init`)."""


def _pool_init(spec: WorkerSpec) -> None:
    global _RUNNER
    _RUNNER = spec.runner("process")


def _pool_run(task: Task) -> dict[str, Any]:
    assert _RUNNER is not None, "worker not initialised"
    try:
        return _RUNNER.run(task)
    except Exception as e:  # send a plain, picklable error that names the task
        raise RuntimeError(f"task {task.key} failed: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


def _run_process(
    suite: SuiteConfig, tasks: list[Task], workers: int, make_governor: GovernorFactory
) -> Iterator[dict[str, Any]]:
    workers = max(1, min(workers, len(tasks)))
    spec = WorkerSpec.of(suite, make_governor, workers)
    # forkserver: workers fork from a clean server process (never from this one, which may hold torch threads);
    # spawn where forkserver does not exist.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        # Preloading torch, the env and the governors in the server makes each worker's start a fork, not a
        # fresh import. (``__main__`` is the forkserver's own business: it is not a preloadable name.)
        preload = ["lbw_env.evaluation.executors", "lbw_env.env"]
        if make_governor.__module__ not in ("__main__", None):
            preload.append(make_governor.__module__)
        ctx.set_forkserver_preload(preload)
    with ctx.Pool(workers, _pool_init, (spec,)) as pool:
        yield from pool.imap_unordered(_pool_run, tasks, chunksize=1)


class _RayWorker:
    """A Ray actor holding one :class:`Runner`."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.runner = spec.runner("ray")

    def run(self, task: Task) -> dict[str, Any]:
        return self.runner.run(task)


def _run_ray(
    suite: SuiteConfig, tasks: list[Task], workers: int, make_governor: GovernorFactory
) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray': Ray is not installed; pip install 'lbw-env[ray]' (ray>=2.9)") from None
    workers = max(1, min(workers, len(tasks)))
    spec = WorkerSpec.of(suite, make_governor, workers)
    started = not ray.is_initialized()
    if started:
        # A private local instance (address="local"), sized to the workers; small object store, since records
        # are a few kB.
        ray.init(
            address="local",
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=128 * 1024 * 1024,
            logging_level=logging.WARNING,
        )
    actor_cls = ray.remote(num_cpus=1)(_RayWorker)
    # ray annotates ActorClass.remote as `ActorHandle[T] | type[T]` (the class arm only lets editors list the
    # methods); it returns "a handle to the newly created actor", which `.run.remote` and ray.kill need.
    actors = [cast("ActorHandle[_RayWorker]", actor_cls.remote(spec)) for _ in range(workers)]
    queue = iter(tasks)
    pending: dict[Any, Any] = {}
    try:
        for actor in actors:
            task = next(queue, None)
            if task is not None:
                pending[actor.run.remote(task)] = actor
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ref)
            yield ray.get(ref)
            task = next(queue, None)
            if task is not None:
                pending[actor.run.remote(task)] = actor
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


EXECUTORS: dict[str, TaskRunner] = {
    "local": _run_local,
    "process": _run_process,
    "ray": _run_ray,
}
