"""The governor file: a trained SB3 policy that loading cannot turn into code execution.

SB3's own ``.zip`` deserialises ``:serialized:`` fields with pickle, and ``vecnormalize.pkl`` is a pickle: a
crafted file runs a shell command the moment it is loaded. A governor file holds nothing that executes::

    <name>/manifest.json         format version; algorithm and SB3 policy class; policy_kwargs as plain JSON;
                                 observation and action spaces; the settings it was trained with (decision
                                 interval, window, envelope, feature names); sha256 and size of the files below
    <name>/policy.safetensors    the policy's state_dict (safetensors: tensors and a JSON header, nothing else)
    <name>/vecnormalize.json     observation statistics (absent when observations were not normalised)

A residual governor's learned part (:mod:`.residual`) is a governor file like any other, whose manifest also
records ``residual``: the base rule's spec and the correction bounds (a switch's: its rules too); its action space
is then the correction space (a switch's: ``Discrete``, the index of a rule), not the envelope's.
``policies.make_governor`` loads it with its rules.

or the same three members in one ``.zip`` (:func:`save_policy_file` writes either; a zip with any other member
is refused). Loading (:func:`load_policy_file`) checks every hash first, rebuilds the policy from the manifest
(``PolicyClass(observation_space, action_space, lr_schedule=<zero>, **policy_kwargs)``, classes only from
:func:`~.policy_json.safe_classes`), and loads the weights with ``strict=True``; neither pickle nor
``torch.load`` is ever called. The manifest's hashes guard against corruption and a swapped or edited file,
not against someone who rewrites the manifest too: they make a governor file as safe to load as a JSON file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym

from lbw_env.cache import atomic_path
from lbw_env.config import ConfigError
from lbw_env.control.compat import GovernanceSettings, space_difference

from .algos import ALGOS, algo_class, check_net_arch
from .policy_json import (
    ObsNormalizer,
    kwargs_from_json,
    kwargs_to_json,
    space_from_json,
    space_to_json,
)
from .residual import ResidualConfig

FORMAT = "lbw-governor"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "policy.safetensors"
NORMALIZER = "vecnormalize.json"
MEMBERS = (MANIFEST, WEIGHTS, NORMALIZER)
MAX_BYTES = 1 << 30
"""Largest member read (a policy of this project is ~100 kB; this only stops a crafted zip bomb)."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Fixed member times: the same governor gives the same bytes (clean diffs of committed artifacts)."""


@dataclasses.dataclass
class PolicyFile:
    """A loaded governor file: the SB3 policy, ready to ``predict``, and what the manifest says about it."""

    path: Path
    algorithm: str
    policy: Any
    """The SB3 ``BasePolicy`` (its ``predict`` carries an LSTM state for recurrent policies, as SB3's does)."""
    settings: GovernanceSettings
    normalizer: ObsNormalizer | None
    manifest: dict[str, Any]
    residual: ResidualConfig | None = None
    """The base rule and correction bounds of a residual governor's learned part (None: a whole governor)."""

    @property
    def observation_space(self) -> gym.Space:
        return self.policy.observation_space

    @property
    def action_space(self) -> gym.Space:
        return self.policy.action_space


def is_policy_file(path: str | Path) -> bool:
    """A governor folder, its ``manifest.json``, or a zip holding a ``manifest.json`` (reading a zip's member
    list runs no code). False for SB3's own zips and for anything else."""
    p = Path(path)
    if p.is_dir():
        return (p / MANIFEST).is_file()
    if p.name == MANIFEST:
        return p.is_file()
    if p.is_file() and zipfile.is_zipfile(p):
        with contextlib.suppress(zipfile.BadZipFile), zipfile.ZipFile(p) as zf:
            return MANIFEST in zf.namelist()
    return False


# ----------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------


def save_policy_file(
    model: Any,
    path: str | Path,
    settings: GovernanceSettings,
    *,
    algorithm: str,
    vecnormalize: Any | None = None,
    info: Mapping[str, Any] | None = None,
    residual: ResidualConfig | None = None,
) -> Path:
    """Write ``model``'s policy as a governor file: a folder, or one zip when ``path`` ends in ``.zip``.

    ``settings``: what the model was trained with (their spaces must be the model's); ``vecnormalize``: the
    VecNormalize whose observation statistics it acts on (or an :class:`ObsNormalizer`); ``info``: free
    provenance (env id, timesteps ...) recorded in the manifest; ``residual``: the base and bounds of a residual
    governor's learned part (its action space is then the correction space). A folder is replaced whole and
    atomically.
    """
    from safetensors.torch import save as save_tensors

    if algorithm not in ALGOS:
        raise ConfigError(f"algorithm {algorithm!r}: expected one of {', '.join(ALGOS)}")
    policy = model.policy
    check_spaces(policy.observation_space, policy.action_space, settings, f"saving {path}", residual)
    normalizer = vecnormalize
    if not isinstance(normalizer, ObsNormalizer):
        normalizer = ObsNormalizer.of_vecnormalize(vecnormalize)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in policy.state_dict().items()}
    members = {WEIGHTS: save_tensors(state)}  # clone: shared tensors become separate entries (strict load)
    if normalizer is not None:
        members[NORMALIZER] = _json_bytes(normalizer.to_json())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algorithm": algorithm,
        "algorithm_class": type(model).__name__,
        "policy_class": type(policy).__name__,
        "policy_kwargs": kwargs_to_json(policy_kwargs_of(model)),
        "observation_space": space_to_json(policy.observation_space),
        "action_space": space_to_json(policy.action_space),
        "settings": settings.to_dict(),
        "normalizer": {"type": normalizer.kind, "file": NORMALIZER} if normalizer is not None else None,
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in members.items()},
        "versions": _versions(),
        "info": kwargs_to_json(dict(info or {}), "info"),
    }
    if residual is not None:  # only then: the manifests of whole governors stay as they were
        manifest["residual"] = residual.to_json()
    members[MANIFEST] = _json_bytes(manifest)
    target = Path(path)
    if target.suffix == ".zip":
        _write_zip(target, members)
    else:
        _write_folder(target, members)
    return target


def policy_kwargs_of(model: Any) -> dict[str, Any]:
    """The keyword arguments that rebuild ``model.policy``: SB3's own record of them (what ``policy.save``
    stores), completed by the algorithm's ``policy_kwargs`` (sb3-contrib's recurrent policy does not report its
    LSTM sizes in the former)."""
    kwargs = dict(model.policy._get_constructor_parameters())
    for key in ("observation_space", "action_space", "lr_schedule"):
        kwargs.pop(key, None)
    kwargs.update(getattr(model, "policy_kwargs", None) or {})
    return kwargs


def _json_bytes(data: Any) -> bytes:
    """Indented JSON with lists of plain values on one line (a 60-element Box stays readable)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    # Only real newlines are touched: inside a JSON string a newline is always escaped.
    text = _FLAT_LIST.sub(lambda m: "[" + _NEWLINE.sub(" ", m[0][1:-1]).strip() + "]", text)
    return (text + "\n").encode("utf-8")


_FLAT_LIST = re.compile(r"\[\n[^\[\]{}]*\n\s*\]")
"""A multi-line list without nested lists or mappings, as ``json.dumps(indent=2)`` writes it."""
_NEWLINE = re.compile(r"\s*\n\s*")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("lbw-env", "stable-baselines3", "sb3-contrib", "torch", "safetensors"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def _write_zip(target: Path, members: dict[str, bytes]) -> None:
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in MEMBERS:
            if name in members:
                zf.writestr(zipfile.ZipInfo(name, _ZIP_TIME), members[name], zipfile.ZIP_DEFLATED)


def _write_folder(target: Path, members: dict[str, bytes]) -> None:
    """Write the members into a fresh folder, then swap it in (never a half-written or mixed governor)."""
    if target.exists() and not (target.is_dir() and ((target / MANIFEST).is_file() or not any(target.iterdir()))):
        raise ConfigError(f"{target}: exists and is not a governor folder; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = tmp.with_suffix(".old")
    try:
        for name, data in members.items():
            (tmp / name).write_bytes(data)
            (tmp / name).chmod(0o644)
        tmp.chmod(0o755)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def load_policy_file(path: str | Path, algorithm: str | None = None) -> PolicyFile:
    """Load a governor file (folder, its ``manifest.json``, or a governor zip) without running any of it.

    ``algorithm``: what the caller expects (the ``ppo`` of ``ppo:<path>``); a file of another algorithm is
    refused, naming the right prefix. Every failure is a one-line :class:`ConfigError` naming the file.
    """
    p = Path(path)
    where = f"governor file {p}"
    members = _read_members(p, where)
    manifest = _parse_manifest(members[MANIFEST], where)
    for name, expected in manifest["files"].items():
        data = members.get(name)
        if data is None:
            raise ConfigError(f"{where}: {name} is missing (listed in {MANIFEST})")
        if not isinstance(expected, Mapping) or _sha256(data) != expected.get("sha256"):
            raise ConfigError(f"{where}: {name} does not match its sha256 in {MANIFEST} (changed or corrupt)")
    algo = manifest["algorithm"]
    if algorithm is not None and algo != algorithm:
        raise ConfigError(f"{where}: a {algo} governor; load it as {algo}:{path}")
    settings = GovernanceSettings.from_dict(_mapping(manifest, "settings", where), f"{where}: settings")
    obs_space = space_from_json(manifest["observation_space"], f"{where}: observation_space")
    act_space = space_from_json(manifest["action_space"], f"{where}: action_space")
    residual = None
    if manifest.get("residual") is not None:
        residual = ResidualConfig.from_json(manifest["residual"], f"{where}: {MANIFEST} residual")
    check_spaces(obs_space, act_space, settings, where, residual)
    normalizer = None
    if manifest["normalizer"] is not None:
        if NORMALIZER not in manifest["files"]:
            raise ConfigError(f"{where}: the manifest names a normaliser but does not list {NORMALIZER}")
        data = _parse_json(members[NORMALIZER], f"{where}: {NORMALIZER}")
        size = settings.observation_space().shape[0]  # obs_space's, which check_spaces matched to the settings
        normalizer = ObsNormalizer.from_json(data, size, f"{where}: {NORMALIZER}")
    if WEIGHTS not in manifest["files"]:
        raise ConfigError(f"{where}: the manifest does not list {WEIGHTS}")
    policy = _build_policy(manifest, obs_space, act_space, members[WEIGHTS], where)
    return PolicyFile(p, algo, policy, settings, normalizer, manifest, residual)


def _read_members(p: Path, where: str) -> dict[str, bytes]:
    """The governor's members as bytes (read once: hashed and parsed from the same bytes)."""
    if p.is_dir() or p.name == MANIFEST:
        folder = p if p.is_dir() else p.parent
        if not (folder / MANIFEST).is_file():
            raise ConfigError(f"{where}: no {MANIFEST} in {folder}")
        out = {}
        for name in MEMBERS:
            f = folder / name
            if f.is_file():
                if f.stat().st_size > MAX_BYTES:
                    raise ConfigError(f"{where}: {name} is larger than {MAX_BYTES} bytes")
                out[name] = f.read_bytes()
        return out
    if not (p.is_file() and zipfile.is_zipfile(p)):
        raise ConfigError(f"{where}: not a governor folder, {MANIFEST} or governor zip")
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
            unknown = sorted({i.filename for i in infos} - set(MEMBERS))
            if unknown or MANIFEST not in zf.namelist():
                found = ", ".join(unknown) or f"no {MANIFEST}"
                raise ConfigError(f"{where}: a governor zip holds only {', '.join(MEMBERS)}; found {found}")
            if any(i.file_size > MAX_BYTES for i in infos):
                raise ConfigError(f"{where}: a member is larger than {MAX_BYTES} bytes")
            return {i.filename: zf.read(i) for i in infos}
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"{where}: a corrupt zip ({type(e).__name__}: {e})") from None


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: not valid JSON ({e})") from None


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    manifest = _parse_json(data, f"{where}: {MANIFEST}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{where}: {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version")
        raise ConfigError(f"{where}: format version {version!r}; this lbw_env reads version {FORMAT_VERSION}")
    keys = ("algorithm", "policy_class", "policy_kwargs", "observation_space", "action_space", "settings", "files")
    missing = [k for k in (*keys, "normalizer") if k not in manifest]
    if missing:
        raise ConfigError(f"{where}: {MANIFEST} lacks {', '.join(missing)}")
    if manifest["algorithm"] not in ALGOS:
        raise ConfigError(f"{where}: algorithm {manifest['algorithm']!r}: expected one of {', '.join(ALGOS)}")
    _mapping(manifest, "files", where)
    return manifest


def _mapping(manifest: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = manifest[key]
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {MANIFEST} {key}: expected a mapping, got {value!r}")
    return value


def check_spaces(
    obs: gym.Space, act: gym.Space, settings: GovernanceSettings, where: str, residual: ResidualConfig | None = None
) -> None:
    """The spaces must be those the settings produce: a file cannot claim one behaviour and hold another. A
    residual governor's learned part acts in the correction space, and needs a continuous envelope."""
    diff = space_difference(settings.observation_space(), obs)
    if diff:
        raise ConfigError(f"{where}: observation space does not match its settings (settings vs policy: {diff})")
    if residual is not None:
        if settings.envelope.action_mode != "continuous":
            raise ConfigError(f"{where}: a residual governor needs a continuous envelope, not discrete")
        diff = space_difference(residual.action_space(), act)
        if diff:
            what = "the index of a switch's rules" if residual.switch else "the residual correction space"
            raise ConfigError(f"{where}: action space is not {what} (expected vs policy: {diff})")
        return
    diff = space_difference(settings.action_space(), act)
    if diff:
        raise ConfigError(f"{where}: action space does not match its envelope (envelope vs policy: {diff})")


def _build_policy(manifest: Mapping[str, Any], obs: gym.Space, act: gym.Space, weights: bytes, where: str) -> Any:
    """``PolicyClass(obs, act, lr_schedule=<zero>, **policy_kwargs)`` with the safetensors weights, strict."""
    import torch
    from safetensors.torch import load as load_tensors

    cls = algo_class(manifest["algorithm"])
    classes = {c.__name__: c for c in cls.policy_aliases.values()}
    name = manifest["policy_class"]
    policy_cls = classes.get(name) if isinstance(name, str) else None
    if policy_cls is None:
        raise ConfigError(f"{where}: policy class {manifest['policy_class']!r} is not one of {cls.__name__}'s")
    kwargs = kwargs_from_json(_mapping(manifest, "policy_kwargs", where))
    check_net_arch(kwargs.get("net_arch"), f"{where}: {MANIFEST} policy_kwargs.net_arch")
    try:
        state = load_tensors(weights)
    except Exception as e:  # safetensors raises its own error type for a malformed header
        raise ConfigError(f"{where}: {WEIGHTS} is not a safetensors file ({e})") from None
    # Building initialises weights from torch's global generator; the loaded weights replace them, and the
    # caller's random stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        try:
            policy = policy_cls(obs, act, lr_schedule=_zero, **kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError) as e:
            message = " ".join(str(e).split())[:300]
            raise ConfigError(f"{where}: cannot build {policy_cls.__name__} ({type(e).__name__}: {message})") from None
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(f"{where}: {WEIGHTS} does not fit the policy ({' '.join(first)[:300]})") from None
    policy.set_training_mode(False)
    return policy


def _zero(_: float) -> float:
    """The learning-rate schedule of a policy that is only ever asked to predict."""
    return 0.0
