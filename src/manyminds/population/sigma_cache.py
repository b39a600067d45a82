"""``sigma="auto"``: a model's calibrated sigma, measured once and cached on disk.

:func:`auto_sigma` returns the sigma that :func:`~manyminds.population.calibrate.calibrate_sigma`
picks for a model (by default: mean per-token ``KL(plain || mind)`` = 0.05 nats on text the plain
model samples from its BOS token), without calibrating again for the same weights:

1. the cache file ``<cache_dir>/<model id>-<key>.json`` holds it, where ``key`` hashes the model id,
   a fingerprint of the weights (:func:`weights_fingerprint`), the calibration settings that move
   the sigma, the population settings (``norms``, ``noise``, ``sigma_scale``) and the zoo's
   documented sigma; a file that does not parse or does not match is recalibrated and rewritten;
2. else, for an unmodified zoo model (its weights equal, tensor for tensor, to the zoo folder's that
   :func:`manyminds.load` reads) at the default settings, the sigma the zoo documents
   (:data:`manyminds.zoo.registry.SIGMA`), without calibrating;
3. else a calibration (seconds on ``tiny-arith``, about five minutes on SmolLM2-135M on 2 CPU cores).

Cases 2 and 3 write the cache atomically (:func:`manyminds.files.atomic_write_text`). A cache that
cannot be written warns (:class:`CalibrationWarning`) and the sigma is still returned.

Cache folder (default): ``$MANYMINDS_CACHE/sigma``, else the zoo's home
(``$MANYMINDS_HOME``, default ``~/.cache/manyminds``) ``/sigma``.

Example:
    >>> model, tok = manyminds.load("tiny-arith")
    >>> sigma = auto_sigma(model, tok, model_id="tiny-arith")     # 0.119: the zoo's, no calibration
    >>> pop = Population(model, sigma=sigma)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from manyminds.files import atomic_write_text

from .calibrate import CalibrationConfig, CalibrationWarning, calibrate_sigma
from .norms import unwrap_model

__all__ = ["AutoSigma", "auto_sigma", "auto_sigma_record", "sigma_cache_dir", "weights_fingerprint"]

CACHE_FORMAT = 1
# CalibrationConfig fields that only shape the curve or the report, never the calibrated sigma
_CURVE_ONLY = ("curve_factors", "answer_tokens", "prompt_tokens", "coherence_margin", "strict")
_SAMPLES = 1024  # elements hashed per parameter tensor in the fingerprint


@dataclass(frozen=True)
class AutoSigma:
    """What :func:`auto_sigma_record` found.

    Attributes:
        sigma: the sigma (base sigma under ``sigma_scale``).
        source: ``"calibrated"`` (measured on this model) or ``"zoo"`` (the zoo's documented sigma).
        cached: whether it was read from the cache file (no work done).
        path: the cache file (``None`` when it could not be written).
        model_id: the model id it is for.
        kl: the mean per-token KL at ``sigma`` (``None`` for the zoo's value).
        reached: whether the calibration reached its target KL (``None`` for the zoo's value).
    """

    sigma: float
    source: str
    cached: bool
    path: Path | None
    model_id: str
    kl: float | None = None
    reached: bool | None = None


def sigma_cache_dir() -> Path:
    """``$MANYMINDS_CACHE/sigma``, else the zoo's home (``$MANYMINDS_HOME`` or ``~/.cache/manyminds``) ``/sigma``."""
    root = os.environ.get("MANYMINDS_CACHE")
    if root:
        return Path(root).expanduser() / "sigma"
    from manyminds.zoo.cache import home

    return home() / "sigma"


def _sample(t: torch.Tensor, samples: int = _SAMPLES) -> bytes:
    """The bytes of up to ``samples`` evenly strided elements of ``t`` (flattened), on the CPU."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return b""
    step = max(1, flat.numel() // samples)
    return flat[::step][:samples].contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _config_text(model: nn.Module) -> str:
    """The model's config as sorted JSON, without what does not change the function (paths, versions, dtype)."""
    config = getattr(unwrap_model(model), "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return ""
    data = {k: v for k, v in config.to_dict().items()
            if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype")}
    return json.dumps(data, sort_keys=True, default=str)


def weights_fingerprint(model: nn.Module, samples: int = _SAMPLES) -> str:
    """A cheap fingerprint of a model's weights (16 hex digits).

    SHA-256 over the model's class, its config (:func:`_config_text`) and, for every parameter in
    ``named_parameters()`` order, its name, shape, dtype and the bytes of up to ``samples`` evenly
    strided elements. Reads about ``samples x num_tensors`` elements (a few hundred KB on a 135M
    model), not the whole model; a fine-tune, a merged adapter, another dtype or a PEFT wrapper
    (its extra parameters) changes it.
    """
    h = hashlib.sha256()
    h.update(type(unwrap_model(model)).__name__.encode())
    h.update(_config_text(model).encode())
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
        h.update(_sample(p, samples))
    return h.hexdigest()[:16]


def _settings(config: CalibrationConfig, norms: str, noise: str, sigma_scale: str) -> dict:
    """The settings the calibrated sigma depends on: the config without its curve-only fields, and
    the population's norms, noise and sigma scale."""
    data = {k: v for k, v in asdict(config).items() if k not in _CURVE_ONLY}
    data["prompts"] = list(config.prompts) if config.prompts is not None else None
    return {**data, "norms": norms, "noise": noise, "sigma_scale": sigma_scale}


def _zoo_sigma(model_id: str, settings: dict) -> float | None:
    """The sigma the zoo documents for ``model_id``, if it is for these settings (the defaults)."""
    from manyminds.zoo.registry import documented_sigma

    default = _settings(CalibrationConfig(), "all", "additive", "absolute")
    return documented_sigma(model_id) if settings == default else None


def _is_zoo_weights(model: nn.Module, model_id: str) -> bool:
    """Whether every parameter of ``model`` equals (in the model's dtype) the tensor of the same name
    in the zoo folder that ``manyminds.load(model_id)`` reads (no build is started)."""
    from safetensors import safe_open

    from manyminds.zoo.registry import resolve

    try:
        folder = Path(resolve(model_id, build_missing=False))
    except (FileNotFoundError, ValueError):
        return False
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return False
    try:
        with ExitStack() as stack:
            handles = [stack.enter_context(safe_open(str(f), framework="pt")) for f in files]
            where = {key: h for h in handles for key in h.keys()}  # noqa: SIM118 - safe_open is not iterable
            for name, p in model.named_parameters():
                if name not in where:
                    return False
                saved = where[name].get_tensor(name)
                if saved.shape != p.shape or not torch.equal(saved.to(device=p.device, dtype=p.dtype), p.detach()):
                    return False
    except Exception:  # noqa: BLE001 - an unreadable zoo file only means: calibrate instead
        return False
    return True


def _slug(model_id: str) -> str:
    """A file-name-safe short form of a model id (``org/model`` -> ``org_model``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[-60:] or "model"


def _read(path: Path, key: str) -> dict | None:
    """The cache record at ``path`` if it is intact and for ``key``; else ``None`` (never raises)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT or record.get("key") != key:
        return None
    sigma = record.get("sigma")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        return None
    if record.get("source") not in ("calibrated", "zoo"):
        return None
    return record


def _write(path: Path, record: dict) -> Path | None:
    """Write ``record`` atomically; on failure warn and return ``None``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        return path
    except OSError as err:
        warnings.warn(f"could not cache the calibrated sigma at {path} ({err}); it will be measured again next "
                      "time (set MANYMINDS_CACHE to a writable folder)", CalibrationWarning, stacklevel=3)
        return None


def _config(config: CalibrationConfig | dict | None) -> CalibrationConfig:
    """As :func:`~manyminds.population.calibrate.calibrated_population`: without ``curve_factors``
    only the calibrated point of the curve is measured (the collapse check)."""
    if isinstance(config, CalibrationConfig):
        return config
    config = dict(config or {})
    config.setdefault("curve_factors", (1.0,))
    return CalibrationConfig(**config)


def auto_sigma_record(model: nn.Module, tokenizer, *, model_id: str, cache_dir: str | os.PathLike | None = None,
                      config: CalibrationConfig | dict | None = None, norms: str = "all", noise: str = "additive",
                      sigma_scale: str = "absolute") -> AutoSigma:
    """The calibrated sigma of ``model`` and where it came from (see the module docstring).

    Args:
        model: the causal LM (as it will be run: its weights are fingerprinted).
        tokenizer: its tokenizer (for the calibration text).
        model_id: a name for the model (zoo name, folder or hub id): part of the cache key and the
            file name; a zoo name enables the zoo's documented sigma.
        cache_dir: the folder of the cache files (default :func:`sigma_cache_dir`).
        config: :class:`CalibrationConfig` or a dict of its fields (default: the library defaults;
            the curve is measured only at the calibrated sigma).
        norms, noise, sigma_scale: the population settings the sigma is for.

    Returns:
        :class:`AutoSigma`.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string naming the model, got {model_id!r}")
    config = _config(config)
    settings = _settings(config, norms, noise, sigma_scale)
    zoo_sigma = _zoo_sigma(model_id, settings)
    fingerprint = weights_fingerprint(model)
    key = hashlib.sha256(json.dumps({"model_id": model_id, "fingerprint": fingerprint, "settings": settings,
                                     "zoo_sigma": zoo_sigma}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() if cache_dir is not None else sigma_cache_dir()
    path = path / f"{_slug(model_id)}-{key}.json"
    record = _read(path, key)
    if record is not None:
        return AutoSigma(float(record["sigma"]), record["source"], True, path, model_id, record.get("kl"),
                         record.get("reached"))
    if zoo_sigma is not None and _is_zoo_weights(model, model_id):
        found = AutoSigma(float(zoo_sigma), "zoo", False, path, model_id)
    else:
        result = calibrate_sigma(model, tokenizer, config, norms=norms, noise=noise, sigma_scale=sigma_scale)
        found = AutoSigma(float(result.sigma), "calibrated", False, path, model_id, float(result.kl),
                          bool(result.reached))
    written = _write(path, {"format": CACHE_FORMAT, "key": key, "model_id": model_id, "fingerprint": fingerprint,
                            "settings": settings, "zoo_sigma": zoo_sigma, "sigma": found.sigma,
                            "source": found.source, "kl": found.kl, "reached": found.reached})
    return AutoSigma(found.sigma, found.source, False, written, model_id, found.kl, found.reached)


def auto_sigma(model: nn.Module, tokenizer, *, model_id: str, cache_dir: str | os.PathLike | None = None,
               config: CalibrationConfig | dict | None = None, norms: str = "all", noise: str = "additive",
               sigma_scale: str = "absolute") -> float:
    """The calibrated sigma of ``model``, measured once and cached: :func:`auto_sigma_record`'s ``sigma``.

    Example:
        >>> pop = Population(model, sigma=auto_sigma(model, tok, model_id="tiny-arith"))
    """
    return auto_sigma_record(model, tokenizer, model_id=model_id, cache_dir=cache_dir, config=config, norms=norms,
                             noise=noise, sigma_scale=sigma_scale).sigma
