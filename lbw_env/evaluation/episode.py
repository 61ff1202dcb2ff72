"""One episode -> one record: a governor drives :class:`~lbw_env.env.LBWEnv` through one scenario and seed.

The loop is SB3's ``evaluate_policy`` for one env, so a learned governor is evaluated exactly as SB3 would
evaluate it, and a rule governor the same way. An episode is deterministic given its scenario, seed and
governor, which is what lets every executor produce the same records (timing fields aside). The record is
plain JSON data of a few kB: resolved configs, final and test numbers, and curves downsampled to at most
:data:`MAX_CURVE_POINTS` points. It also holds the untouched starting model's test perplexity
(``initial_test_ppl``: the yardstick a do-nothing governor scores 0 against) and ``governor_hash``, the sha256 of
the governor's config or manifest, so a report can say exactly which guard thresholds or policy it evaluated.

``replay`` holds what a replay needs and nothing of the governor: the reset seed and options, the size of the
env's scenario pool (``reset`` draws an index into it before the run seed) and every action the env received,
one per decision (:class:`ActionTrace`: raw bytes, compressed). ``evaluate.py --verify`` (:mod:`.verify`) feeds
them to a fresh env built from the record's own configs and checks every number, so a reader can confirm a
committed record without running (or trusting) the governor that made it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import platform
import subprocess
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import json_safe, sha256_file
from ..config import config_dir, to_dict
from ..control.protocol import Governor
from ..plant.records import safe_exp
from ..scenarios import Scenario, evaluation_seed, get_scenario

MAX_CURVE_POINTS = 100
"""Curves in a record are downsampled to at most this many points (records stay a few kB)."""
MAX_MANIFEST_BYTES = 1 << 24
"""Largest ``manifest.json`` member of a governor zip that :func:`governor_hash` reads (else the zip is hashed)."""
MAX_TRACE_BYTES = 1 << 26
"""Largest action trace segment :meth:`ActionTrace.decode` inflates (a million decisions of 16 float32s)."""


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a record's numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist, key in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("gymnasium", "gymnasium"),
        ("stable-baselines3", "stable_baselines3"),
        ("lbw-env", "lbw_env"),
        ("numpy", "numpy"),
    ):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    import torch  # loaded by the env already

    # Float results are bit-exact on one machine with one torch, not across kernels (see tests/test_golden.py):
    # the CPU kind tells a replay (evaluate.py --verify) whether to expect the last bit to agree.
    out["cpu"] = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    out["git"] = git_commit()
    return out


RECORDS_DIR = "benchmarks/results"
"""Where the committed records live. Changes under it are not code changes: a suite resumed into its committed
folder appends to a tracked ``records.jsonl``, and its later runs must not call their own code dirty for it."""


def git_commit(root: Path | None = None) -> str:
    """The commit of the checkout this package runs from (``-dirty`` with uncommitted changes to tracked files
    outside :data:`RECORDS_DIR`), "" where it is not a git checkout (an installed wheel): the code version a
    committed record names. ``root``: another checkout (tests)."""
    root = Path(__file__).resolve().parents[2] if root is None else root
    if not (root / ".git").exists() or not (root / "pyproject.toml").is_file():
        return ""  # a site-packages copy may lie inside someone else's repository: never report that one
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=10, check=True)
        commit = run(["git", "-C", str(root), "rev-parse", "HEAD"]).stdout.strip()
        status = ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]
        dirty = run([*status, "--", ".", f":(exclude){RECORDS_DIR}"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit + ("-dirty" if dirty else "")


def governor_hash(governor: Governor, spec: str) -> str:
    """sha256 of what a governor is beyond its code: its config or manifest file ("" where it has none).

    A governor may state its own (a ``governor_hash`` string attribute). Otherwise the file is the spec's
    argument (``lbw_guard:<yaml>``, ``ppo:<folder | manifest.json | zip>``: a folder's ``manifest.json``, a
    zip's ``manifest.json`` member, else the zip's bytes) or, for a bare name, ``configs/governors/<name>.yaml``
    where that exists (the guard's default thresholds). Plain AdamW and other argument-free rules: "".
    The engine does not import the governors, so this goes by those file conventions, not by their loaders.
    """
    own = getattr(governor, "governor_hash", None)
    if isinstance(own, str) and own:
        return own
    name, _, arg = spec.partition(":")
    path = Path(arg).expanduser() if arg else config_dir() / "governors" / f"{name}.yaml"
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        return ""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            # A manifest is a few kB; a larger one is not read (a crafted zip could inflate to anything).
            if "manifest.json" in names and zf.getinfo("manifest.json").file_size <= MAX_MANIFEST_BYTES:
                return hashlib.sha256(zf.read("manifest.json")).hexdigest()
    return sha256_file(path)


class ActionTrace:
    """The actions of one episode, one per decision, exactly as the env received them.

    Stored as the raw little-endian bytes of each run of equally typed and shaped actions, zlib-compressed and
    base64-encoded: exact for any dtype (a float32 action is its four bytes, not a decimal that might round),
    and small (200 decisions of three float32 numbers are under 3.3 kB; a constant governor's a few dozen
    bytes). ``form`` says whether the env got numpy arrays or plain sequences (the envelope treats an integer
    ndarray and a list of ints differently in continuous mode), so a replay hands over the same kind of object.
    """

    def __init__(self) -> None:
        self._actions: list[tuple[np.ndarray, str]] = []

    def add(self, action: Any) -> None:
        """Keep a copy of ``action`` now (a governor may reuse its output buffer)."""
        form = "ndarray" if isinstance(action, np.ndarray) else "list"
        arr = np.array(action, copy=True)
        if arr.dtype.kind not in "biuf":  # e.g. Decimals in a list: the envelope reads them as float64
            arr, form = arr.astype(np.float64), "list"
        self._actions.append((arr, form))

    def __len__(self) -> int:
        return len(self._actions)

    def to_json(self) -> list[dict[str, Any]]:
        """Segments ``{form, dtype, shape, data}``: consecutive actions of one form, dtype and shape, stacked."""
        segments: list[dict[str, Any]] = []
        i = 0
        while i < len(self._actions):
            arr, form = self._actions[i]
            j = i + 1
            while j < len(self._actions) and _same_kind(self._actions[j], (arr, form)):
                j += 1
            dtype = arr.dtype.newbyteorder("<")
            block = np.stack([a for a, _ in self._actions[i:j]]).astype(dtype)
            data = base64.b64encode(zlib.compress(block.tobytes(), 9)).decode("ascii")
            segments.append({"form": form, "dtype": dtype.str, "shape": list(block.shape), "data": data})
            i = j
        return segments

    @staticmethod
    def decode(segments: Any) -> list[Any]:
        """The actions of :meth:`to_json`, as the env received them (arrays, or nested lists for ``list``).
        Raises ``ValueError`` for a malformed trace."""
        if not isinstance(segments, list):
            raise ValueError(f"expected a list of segments, got {type(segments).__name__}")
        out: list[Any] = []
        for k, seg in enumerate(segments):
            try:
                dtype = np.dtype(seg["dtype"])
                shape = tuple(int(n) for n in seg["shape"])
                size = math.prod(shape) * dtype.itemsize
                if dtype.kind not in "biuf" or not shape or min(shape) < 0 or seg["form"] not in ("ndarray", "list"):
                    raise ValueError(f"form {seg['form']!r}, dtype {seg['dtype']!r}, shape {list(shape)}")
                if size > MAX_TRACE_BYTES:
                    raise ValueError(f"{size} bytes of actions; at most {MAX_TRACE_BYTES} are read")
                # Decompress no more than the shape needs: a crafted record cannot inflate to anything.
                raw = zlib.decompressobj().decompress(base64.b64decode(seg["data"], validate=True), size + 1)
                block = np.frombuffer(raw, dtype=dtype).reshape(shape)
            except (KeyError, TypeError, ValueError, zlib.error) as e:
                raise ValueError(f"segment {k}: {type(e).__name__}: {e}") from None
            native = block.astype(dtype.newbyteorder("="))
            out += [a.copy() if seg["form"] == "ndarray" else a.tolist() for a in native]
        return out


def _same_kind(a: tuple[np.ndarray, str], b: tuple[np.ndarray, str]) -> bool:
    return a[1] == b[1] and a[0].dtype == b[0].dtype and a[0].shape == b[0].shape


def _finite_mean(xs: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none): a NaN-loss step must not blank a whole curve bin."""
    finite = [x for x in xs if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def downsample_intervals(intervals: list[list[Any]]) -> dict[str, list[Any]]:
    """Per-interval step records -> at most MAX_CURVE_POINTS bins of consecutive intervals.

    A bin's point: the step count at its end, the mean finite training loss and mean LR scale over its steps,
    and its skipped and non-finite step counts.
    """
    k = max(1, math.ceil(len(intervals) / MAX_CURVE_POINTS))
    out: dict[str, list[Any]] = {"step": [], "loss": [], "lr_scale": [], "skipped": [], "nonfinite": []}
    for i in range(0, len(intervals), k):
        records = [r for interval in intervals[i : i + k] for r in interval]
        if not records:
            continue
        out["step"].append(records[-1].step + 1)
        out["loss"].append(_finite_mean([r.loss for r in records]))
        out["lr_scale"].append(float(np.mean([r.lr_scale for r in records])))
        out["skipped"].append(sum(bool(r.skipped) for r in records))
        out["nonfinite"].append(sum(bool(r.nonfinite) for r in records))
    return out


def thin_indices(n: int) -> list[int]:
    """Indices keeping at most MAX_CURVE_POINTS of n points, evenly, always with the first and the last."""
    if n <= MAX_CURVE_POINTS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (MAX_CURVE_POINTS - 1)) for i in range(MAX_CURVE_POINTS)})


def run_episode(
    env: Any,
    governor: Governor,
    scenario: str | Scenario,
    seed: int,
    eval_every: int = 0,
    *,
    suite: str = "",
    arm: str = "",
    governor_spec: str = "",
    reset_seed: int | None = None,
) -> dict[str, Any]:
    """Run one episode of ``scenario`` with ``seed`` under ``governor``; return its record (plain JSON data).

    The loop is SB3's ``evaluate_policy`` for one env: ``state=None``, ``episode_start`` true on the first call
    only, ``deterministic=True``. Every ``eval_every`` decisions the validation perplexity is measured (outside
    the timed run; evaluation neither consumes batches nor draws random numbers, so it does not change the
    trajectory). Times: ``timing.wall_seconds`` is the episode after ``reset`` without those evaluations
    (training, governor, envelope), ``timing.valid_seconds`` the same clock at each validation point.
    ``reset_seed``: the seed for ``env.reset`` (default: the split's evaluation seed of ``seed``; a replay
    passes the record's own).
    """
    base = env.unwrapped
    name = scenario if isinstance(scenario, str) else scenario.name
    # Each split has its own block of reset seeds (train s, val 10000+s, test 20000+s): see evaluation_seed.
    split = get_scenario(name).split if isinstance(scenario, str) else scenario.split
    if reset_seed is None:
        reset_seed = evaluation_seed(split, seed)
    reset_options = {"scenario": name}
    t_reset = time.perf_counter()
    obs, reset_info = env.reset(seed=reset_seed, options=dict(reset_options))
    reset_seconds = time.perf_counter() - t_reset
    sc: Scenario = base.scenario
    trainer = base.trainer
    # The untouched start on the test split (evaluation draws no random numbers and consumes no batches, so the
    # trajectory is unchanged); outside the timed run.
    te = time.perf_counter()
    initial_test = trainer.evaluate("test")
    initial_test_seconds = time.perf_counter() - te

    t0 = time.perf_counter()
    eval_seconds = governor_seconds = train_seconds = 0.0
    state: Any = None
    episode_start = np.ones((1,), dtype=bool)
    intervals: list[list[Any]] = []
    valid_step: list[int] = [0]
    valid_ppl: list[float] = [math.nan]  # filled from info["final"]["initial_valid_loss"] at the end
    valid_time: list[float] = [0.0]
    valid_train_time: list[float] = [0.0]
    total_return, decisions = 0.0, 0
    trace = ActionTrace()
    while True:
        tg = time.perf_counter()
        action, state = governor.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        governor_seconds += time.perf_counter() - tg
        episode_start = np.zeros((1,), dtype=bool)
        trace.add(action)
        obs, reward, terminated, truncated, info = env.step(action)
        total_return += float(reward)
        decisions += 1
        intervals.append(list(info["records"]))
        train_seconds += sum(r.seconds for r in info["records"])
        if terminated or truncated:
            break
        if eval_every and decisions % eval_every == 0:
            te = time.perf_counter()
            result = trainer.evaluate("valid")
            elapsed = te - t0 - eval_seconds
            eval_seconds += time.perf_counter() - te
            valid_step.append(trainer.t)
            valid_ppl.append(result.ppl)
            valid_time.append(elapsed)
            valid_train_time.append(train_seconds)
    wall_seconds = time.perf_counter() - t0 - eval_seconds
    final = info["final"]
    valid_ppl[0] = safe_exp(final["initial_valid_loss"])
    valid_step.append(int(final["steps"]))
    valid_ppl.append(float(final["valid_ppl"]))
    valid_time.append(wall_seconds)
    valid_train_time.append(train_seconds)
    keep = thin_indices(len(valid_step))
    te = time.perf_counter()
    test = trainer.evaluate("test")
    test_seconds = time.perf_counter() - te

    finite_valid = [p for p in valid_ppl if math.isfinite(p)]
    record = {
        "suite": suite,
        "scenario": sc.name,
        "family": sc.family,
        "split": sc.split,
        "arm": arm or governor_spec,
        "governor": governor_spec,
        "governor_class": type(governor).__name__,
        "governor_hash": governor_hash(governor, governor_spec),
        "seed": int(seed),
        "run_seed": int(reset_info.get("run_seed", -1)),
        "eval_every": int(eval_every),
        "trainer": to_dict(sc.trainer),
        "env": {k: v for k, v in to_dict(base.cfg).items() if k != "scenarios"},
        "versions": package_versions(),
        "final_valid_loss": float(final["valid_loss"]),
        "final_valid_ppl": float(final["valid_ppl"]),
        "initial_valid_ppl": valid_ppl[0],
        "initial_test_loss": initial_test.loss,
        "initial_test_ppl": initial_test.ppl,
        "best_valid_ppl": min(finite_valid) if finite_valid else math.inf,
        "test_loss": test.loss,
        "test_ppl": test.ppl,
        "steps": int(final["steps"]),
        "decisions": decisions,
        "skipped_steps": int(final["skipped_steps"]),
        "rollbacks": int(final["rollbacks"]),
        "diverged": bool(final["diverged"]),
        "interventions": dict(info.get("interventions", {})),
        "return": total_return,
        "curves": {
            "train": downsample_intervals(intervals),
            "valid": {"step": [valid_step[i] for i in keep], "ppl": [valid_ppl[i] for i in keep]},
        },
        # reset draws a pool index before the run seed, so the pool's size is part of what a replay needs.
        "replay": {
            "reset_seed": int(reset_seed),
            "reset_options": reset_options,
            "pool_size": len(base.pool),
            "actions": trace.to_json(),
        },
        "timing": {
            "wall_seconds": wall_seconds,
            "train_seconds": train_seconds,
            "env_train_seconds": float(final["train_seconds"]),
            "governor_seconds": governor_seconds,
            "eval_seconds": eval_seconds,
            "test_seconds": test_seconds,
            "initial_test_seconds": initial_test_seconds,
            "reset_seconds": reset_seconds,
            "valid_seconds": [valid_time[i] for i in keep],
            "valid_train_seconds": [valid_train_time[i] for i in keep],
        },
    }
    return json_safe(record)
