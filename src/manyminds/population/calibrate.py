"""Choose sigma for a model from a target the user understands: how far a mind's next-token
distributions move from the plain model's.

The target is the mean per-token KL divergence, in nats,

    KL(sigma) = mean_{minds m} mean_{scored tokens t} sum_v p(v | x_<t) [log p(v | x_<t) - log q_m(v | x_<t)]

between the plain model ``p`` and mind ``m`` ``q_m`` on calibration text. ``KL`` grows with
sigma (``~ sigma^2`` for small sigma), so a safeguarded secant search in ``log sigma`` finds the
sigma whose ``KL`` is within ``tolerance`` of the target in a few forwards. Unlike sigma itself, a KL means
the same on every model and vocabulary.

Calibration text, by default, works on any model: the plain model's own samples (temperature 1,
seeded) continuing its BOS token (or EOS when it has no BOS), so it needs no prompt in the
model's language or alphabet; with ``prompts`` it is the plain model's samples continuing those
prompts (chat-formatted when the tokenizer has a chat template). Only the sampled tokens are scored.

The curve: at a few sigmas around the calibrated one (``curve_factors``) the minds also answer
greedily (from the prompts, or from the first ``prompt_tokens`` of each calibration text), and

- ``diversity``: mean over prompts of the mean pairwise Jaccard distance between the token-bigram
  sets of the minds' answers (0: all minds say the same; 1: no shared bigram);
- ``coherence``: mean over answers of the mean token log-likelihood of an answer under the plain
  model (the plain model's own greedy answers give the reference ``plain_coherence``);
- ``repetition``: share of answers that are degenerate repetition
  (:func:`~manyminds.population.collapse.is_degenerate`).

A point is ``collapsed`` when its coherence is more than ``coherence_margin`` nats below the
plain model's, or half its answers are degenerate repetition.

An unreachable target (even ``sigma_max`` stays below it, or ``sigma_min`` already exceeds it)
warns with :class:`CalibrationWarning`, naming the best sigma found, which the result then holds
(``result.reached`` is ``False``); ``strict=True`` raises ``ValueError`` instead.

Example:
    >>> pop = Population(model, sigma="calibrated", tokenizer=tok)            # default target
    >>> result = calibrate_sigma(model, tok, CalibrationConfig(target_kl=0.05))
    >>> result.sigma, result.table()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from manyminds.rows import has_chat_template, pad_left, tokenize_prompts, user_message

from .collapse import is_degenerate
from .norms import unwrap_model

__all__ = ["CalibrationConfig", "CalibrationData", "CalibrationPoint", "CalibrationResult", "CalibrationWarning",
           "answer_diversity", "answer_stats", "build_calibration_data", "calibrate_sigma", "mean_token_kl",
           "plot_calibration", "token_kl"]

DEFAULT_TARGET_KL = 0.05


class CalibrationWarning(UserWarning):
    """The calibration target could not be reached in the sigma range; the best sigma found is used."""


@dataclass
class CalibrationConfig:
    """Settings of :func:`calibrate_sigma` (and of ``Population(model, sigma="calibrated")``)."""

    target_kl: float = field(default=DEFAULT_TARGET_KL, metadata={
        "help": "target mean per-token KL(plain || mind) in nats on the calibration text"})
    minds: int = field(default=4, metadata={"help": "minds (ids 0 .. minds-1) averaged in KL and compared for diversity"})
    prompts: Sequence[str] | None = field(default=None, metadata={
        "help": "prompts whose sampled continuations are the calibration text (default: continue BOS)"})
    num_texts: int = field(default=8, metadata={"help": "calibration texts sampled when prompts is None "
                                                        "(with prompts: one per prompt)"})
    text_tokens: int = field(default=32, metadata={"help": "sampled tokens per calibration text (scored in KL)"})
    prompt_tokens: int = field(default=8, metadata={
        "help": "without prompts: the first tokens of each calibration text that the minds answer"})
    answer_tokens: int = field(default=24, metadata={"help": "greedy answer length for diversity / coherence"})
    sigma_min: float = field(default=1e-4, metadata={"help": "smallest sigma searched"})
    sigma_max: float = field(default=1.0, metadata={"help": "largest sigma searched"})
    sigma_start: float = field(default=0.02, metadata={"help": "first sigma tried (the paper's)"})
    steps: int = field(default=12, metadata={"help": "most KL evaluations of the search"})
    tolerance: float = field(default=0.05, metadata={"help": "stop when KL is within this relative error of the target"})
    curve_factors: tuple[float, ...] = field(default=(0.25, 0.5, 1.0, 2.0, 4.0), metadata={
        "help": "the curve's sigmas, as multiples of the calibrated sigma (empty: no curve)"})
    coherence_margin: float = field(default=1.0, metadata={
        "help": "a curve point is collapsed when its coherence is this many nats below the plain model's"})
    seed: int = field(default=0, metadata={"help": "seed of the sampled calibration text (a forked RNG)"})
    strict: bool = field(default=False, metadata={"help": "raise ValueError (not a warning) on an unreachable target"})

    def __post_init__(self):
        if not (self.target_kl > 0 and math.isfinite(self.target_kl)):
            raise ValueError(f"target_kl must be a positive number of nats, got {self.target_kl}; e.g. 0.1")
        for name in ("minds", "num_texts", "text_tokens", "prompt_tokens", "answer_tokens", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.minds < 2:
            raise ValueError(f"minds must be >= 2 (diversity compares minds), got {self.minds}")
        if not 0 < self.sigma_min < self.sigma_max < float("inf"):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not self.sigma_start > 0:
            raise ValueError(f"sigma_start must be > 0, got {self.sigma_start}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")
        self.curve_factors = tuple(float(f) for f in self.curve_factors)
        if any(not f > 0 for f in self.curve_factors):
            raise ValueError(f"curve_factors must be positive, got {self.curve_factors}")
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if self.prompts is not None:
            self.prompts = list(self.prompts)
            if not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
                raise ValueError("prompts must be a non-empty list of non-empty strings (or None to continue BOS)")


@dataclass
class CalibrationData:
    """Token tensors of one calibration run (all on the model's device).

    Attributes:
        text_ids: calibration texts ``[N, T]`` (left-padded prompt + sampled continuation).
        text_mask: attention mask ``[N, T]``.
        scored: ``[N, T]`` bool, the sampled tokens (up to and including the first EOS) whose
            next-token distributions enter the KL.
        prompt_ids: the prompts the minds answer ``[N, P]`` (left-padded).
        prompt_mask: ``[N, P]``.
    """

    text_ids: torch.Tensor
    text_mask: torch.Tensor
    scored: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor


@dataclass
class CalibrationPoint:
    """One point of the sigma curve (``diversity``/``coherence``/``repetition`` are ``None`` for
    points of the search that were not on the curve)."""

    sigma: float
    kl: float
    diversity: float | None = None
    coherence: float | None = None
    repetition: float | None = None
    collapsed: bool | None = None


@dataclass
class CalibrationResult:
    """What :func:`calibrate_sigma` found.

    Attributes:
        sigma: the calibrated (base) sigma, under ``sigma_scale``.
        kl: its mean per-token KL (nats).
        target_kl: the target.
        reached: whether ``kl`` is within the tolerance of the target.
        sigma_scale, noise, norms: the population settings the sigma is for.
        plain_coherence: mean token log-likelihood of the plain model's own greedy answers.
        curve: points at ``curve_factors * sigma`` (and ``0``: the plain model), sorted by sigma.
        search: every ``(sigma, kl)`` the search evaluated, in order.
        message: why the target was not reached (empty when it was).
    """

    sigma: float
    kl: float
    target_kl: float
    reached: bool
    sigma_scale: str
    noise: str
    norms: str
    plain_coherence: float | None
    curve: list[CalibrationPoint]
    search: list[tuple[float, float]]
    message: str = ""

    @property
    def point(self) -> CalibrationPoint | None:
        """The curve point at the calibrated sigma (``None`` without a curve)."""
        return next((p for p in self.curve if p.sigma == self.sigma), None)

    def to_dict(self) -> dict:
        """A JSON-able dict."""
        return asdict(self)

    def table(self) -> list[dict]:
        """The curve as rows ``{sigma, kl, diversity, coherence, repetition, collapsed, calibrated}``."""
        return [{**asdict(p), "calibrated": p.sigma == self.sigma} for p in self.curve]


# ----------------------------------------------------------------------------- math


def token_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the last dim: ``[..., V] -> [...]``.

    Args:
        logp: log-probabilities of the reference (plain model) ``[..., V]``.
        logq: log-probabilities of the other distribution (a mind) ``[..., V]``.
    """
    return (logp.exp() * (logp - logq)).sum(-1)


def _bigrams(tokens: Sequence[int]) -> set:
    return {tuple(tokens[i:i + 2]) for i in range(len(tokens) - 1)} if len(tokens) > 1 else {tuple(tokens)}


def answer_diversity(answers: Sequence[Sequence[int]]) -> float:
    """Mean pairwise Jaccard distance ``1 - |A ∩ B| / |A ∪ B|`` between the token-bigram sets of
    answers to one prompt (two empty answers are at distance 0). ``0.0`` for fewer than two."""
    sets = [_bigrams(list(a)) for a in answers]
    dists = []
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            union = sets[i] | sets[j]
            dists.append(1.0 - len(sets[i] & sets[j]) / len(union) if union else 0.0)
    return sum(dists) / len(dists) if dists else 0.0


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: ``cumsum(mask) - 1`` (0 on padding)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _until_eos(tokens: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """``[B, L]`` bool: the tokens up to and including the first EOS of each row."""
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    after = is_eos.long().cumsum(-1) - is_eos.long()  # EOS seen strictly before this position
    return after == 0


# ----------------------------------------------------------------------------- data


def _padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids, attention_mask`` ``[B, T_max]``, left-padded."""
    out = pad_left(rows, pad_id, device)
    return out["input_ids"], out["attention_mask"]


def _eos_ids(model: nn.Module, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(getattr(unwrap_model(model), "generation_config", None), "eos_token_id", None),
                   getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(s) for s in source)
    return ids


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, as the generation path encodes them (:func:`manyminds.rows.tokenize_prompts`):
    a user turn of the chat template when the tokenizer has one, else the raw text."""
    rows = tokenize_prompts(tokenizer, [user_message(p) for p in prompts] if has_chat_template(tokenizer)
                            else list(prompts))
    for p, r in zip(prompts, rows):
        if not r:
            raise ValueError(f"prompt {p!r} encodes to no token; pass a longer prompt")
    return rows


def build_calibration_data(model: nn.Module, tokenizer, config: CalibrationConfig) -> CalibrationData:
    """Sample the calibration text with the plain model (see the module docstring).

    Sampling runs under ``torch.random.fork_rng`` seeded with ``config.seed``: the caller's global
    RNG is left as it was.
    """
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    if config.prompts is not None:
        starts = _encode_prompts(tokenizer, config.prompts)
    else:
        start = getattr(tokenizer, "bos_token_id", None)
        start = start if isinstance(start, int) else getattr(tokenizer, "eos_token_id", None)
        if not isinstance(start, int):
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to start calibration text from; "
                             "pass prompts (CalibrationConfig(prompts=[...]))")
        starts = [[start]] * config.num_texts
    ids, mask = _padded(starts, pad, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(config.seed)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=config.text_tokens, min_new_tokens=min(config.text_tokens, 4),
                             pad_token_id=pad)
    new = out[:, ids.shape[1]:]  # [N, L]
    keep = _until_eos(new, eos)  # [N, L]
    text_ids = out
    text_mask = torch.cat([mask, keep.long()], dim=1)
    scored = torch.cat([torch.zeros_like(mask, dtype=torch.bool), keep], dim=1)
    if config.prompts is not None:
        prompt_ids, prompt_mask = ids, mask
    else:  # the minds answer the first prompt_tokens sampled tokens of each text
        rows = [starts[i] + new[i][keep[i]][:config.prompt_tokens].tolist() for i in range(len(starts))]
        prompt_ids, prompt_mask = _padded(rows, pad, device)
    return CalibrationData(text_ids, text_mask, scored, prompt_ids, prompt_mask)


# ----------------------------------------------------------------------------- measurements


def _scored_logprobs(model: nn.Module, data: CalibrationData) -> torch.Tensor:
    """Log-probabilities ``[K, V]`` (float32) of the next-token distributions that predict the scored tokens."""
    logits = model(input_ids=data.text_ids, attention_mask=data.text_mask,
                   position_ids=_positions(data.text_mask)).logits[:, :-1]  # [N, T-1, V]
    return F.log_softmax(logits[data.scored[:, 1:]].float(), dim=-1)  # [K, V]


def mean_token_kl(population, data: CalibrationData, sigma: float, minds: Sequence[int],
                  plain_logprobs: torch.Tensor | None = None) -> float:
    """Mean over ``minds`` and scored tokens of ``KL(plain || mind)`` at base sigma ``sigma``.

    ``plain_logprobs`` (``[K, V]``, from the plain model) is computed when not given. The
    population's sigma is set to ``sigma`` and restored afterwards.
    """
    model = population.model
    saved = list(population.sigmas), population.base_sigma
    try:
        with torch.no_grad():
            if plain_logprobs is None:
                plain_logprobs = _scored_logprobs(model, data)
            population._set_sigma(float(sigma))
            rows = data.text_ids.shape[0]
            total = 0.0
            for m in minds:
                with population.minds([int(m)] * rows):
                    total += float(token_kl(plain_logprobs, _scored_logprobs(model, data)).mean())
    finally:
        population.sigmas, population.base_sigma = saved
    return total / len(minds)


def answer_stats(population, data: CalibrationData, sigma: float, minds: Sequence[int], answer_tokens: int,
                 tokenizer, eos_ids: set[int], pad_id: int) -> tuple[float, float, float]:
    """``(diversity, coherence, repetition)`` of the minds' greedy answers at base sigma ``sigma``
    (see the module docstring); ``minds=[-1]`` measures the plain model."""
    model = population.model
    n = data.prompt_ids.shape[0]
    ids = [int(m) for _ in range(n) for m in minds]  # prompt-major rows: [N * M]
    prompt = data.prompt_ids.repeat_interleave(len(minds), dim=0)  # [N*M, P]
    mask = data.prompt_mask.repeat_interleave(len(minds), dim=0)
    saved = list(population.sigmas), population.base_sigma
    try:
        population._set_sigma(float(sigma))
        with torch.no_grad(), population.minds(ids):
            out = model.generate(input_ids=prompt, attention_mask=mask, do_sample=False,
                                 max_new_tokens=answer_tokens, pad_token_id=pad_id)
    finally:
        population.sigmas, population.base_sigma = saved
    new = out[:, prompt.shape[1]:]  # [N*M, L]
    keep = _until_eos(new, eos_ids)  # [N*M, L]
    with torch.no_grad():  # coherence: the plain model scores the answers
        full_mask = torch.cat([mask, keep.long()], dim=1)
        logits = model(input_ids=out, attention_mask=full_mask, position_ids=_positions(full_mask)).logits
        logp = F.log_softmax(logits[:, prompt.shape[1] - 1:-1].float(), dim=-1)  # [N*M, L, V]
        token_logp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)  # [N*M, L]
    counts = keep.sum(-1).clamp_min(1)
    coherence = float(((token_logp * keep).sum(-1) / counts).mean())
    answers = [row[k].tolist() for row, k in zip(new, keep)]
    content = [[t for t in a if t not in eos_ids] for a in answers]
    diversity = sum(answer_diversity(content[i * len(minds):(i + 1) * len(minds)]) for i in range(n)) / n
    texts = tokenizer.batch_decode(content, skip_special_tokens=True)
    repetition = sum(map(is_degenerate, texts)) / len(texts)
    return diversity, coherence, repetition


# ----------------------------------------------------------------------------- search


def _search(kl_at, target: float, config: CalibrationConfig) -> tuple[float, float, bool, str]:
    """Solve ``kl_at(sigma) = target`` in ``log sigma`` -> ``(sigma, kl, reached, message)``.

    A safeguarded secant on ``log KL`` vs ``log sigma``: the first step assumes ``KL ~ sigma^2``
    (slope 2, exact for small sigma), later steps use the slope through the last two points
    (clipped to [0.5, 6]). A step that leaves the bracket of evaluated points (KL below / above
    the target) bisects the bracket in ``log sigma`` instead; a step past ``sigma_min`` /
    ``sigma_max`` evaluates that end, which tells an unreachable target. Typically 3-5 evaluations.
    """
    close = math.log1p(config.tolerance)

    def err(kl: float) -> float:
        return math.log(max(kl, 1e-30) / target)

    lo_s, hi_s = config.sigma_min, config.sigma_max  # bracket ends; evaluated once their kl is known
    lo_known = hi_known = False
    points: list[tuple[float, float]] = []
    sigma = min(max(config.sigma_start, lo_s), hi_s)
    for _ in range(config.steps):
        kl = kl_at(sigma)
        points.append((sigma, kl))
        if abs(err(kl)) <= close:
            return sigma, kl, True, ""
        if kl < target:
            if sigma >= config.sigma_max:
                return sigma, kl, False, (f"target KL {target:g} not reached: the largest sigma searched, {sigma:g}, "
                                          f"gives KL {kl:.3g}; using it (raise sigma_max or lower target_kl)")
            lo_s, lo_known = sigma, True
        else:
            if sigma <= config.sigma_min:
                return sigma, kl, False, (f"target KL {target:g} not reached: the smallest sigma searched, "
                                          f"{sigma:g}, already gives KL {kl:.3g}; using it (lower sigma_min or raise "
                                          "target_kl)")
            hi_s, hi_known = sigma, True
        slope = 2.0
        if len(points) >= 2:
            (s1, k1), (s2, k2) = points[-2], points[-1]
            if s1 != s2 and k1 > 0 and k2 > 0:
                slope = min(max((math.log(k2) - math.log(k1)) / (math.log(s2) - math.log(s1)), 0.5), 6.0)
        step = math.exp(math.log(sigma) - err(kl) / slope)
        if step <= lo_s:
            step = math.sqrt(lo_s * hi_s) if lo_known else lo_s
        elif step >= hi_s:
            step = math.sqrt(lo_s * hi_s) if hi_known else hi_s
        sigma = step
    best = min(points, key=lambda p: abs(err(p[1])))
    return best[0], best[1], False, (f"target KL {target:g} not reached within {config.tolerance:.0%} in "
                                     f"{config.steps} steps: best sigma {best[0]:.4g} gives KL {best[1]:.3g} (raise "
                                     "steps or tolerance)")


def calibrate_sigma(model_or_population, tokenizer=None, config: CalibrationConfig | dict | None = None,
                    **population_kwargs) -> CalibrationResult:
    """Pick the sigma whose minds move the next-token distributions by ``config.target_kl`` nats.

    Args:
        model_or_population: a :class:`~manyminds.population.Population` (its ``seed``, ``norms``,
            ``noise`` and ``sigma_scale`` are used; its sigma is left unchanged), or a model (then
            ``population_kwargs`` build the population, e.g. ``sigma_scale="weight"``).
        tokenizer: the model's tokenizer (default: the population's).
        config: :class:`CalibrationConfig` or a dict of its fields (default: all defaults).

    Returns:
        :class:`CalibrationResult`: the sigma, its KL, the search and the curve.

    Raises:
        ValueError: bad settings, no tokenizer, or an unreachable target with ``strict=True``.
    """
    from .population import Population

    if isinstance(model_or_population, Population):
        if population_kwargs:
            raise TypeError("pass population settings to Population(...), not to calibrate_sigma, when "
                            "calibrating a population")
        pop = model_or_population
    else:
        pop = Population(model_or_population, sigma=0.0, **population_kwargs)
    config = CalibrationConfig(**config) if isinstance(config, dict) else (config or CalibrationConfig())
    tokenizer = tokenizer or pop.tokenizer
    if tokenizer is None:
        raise ValueError("calibration needs the model's tokenizer: pass tokenizer=... (or Population(..., "
                         "tokenizer=tok))")
    model = pop.model
    was_training = model.training
    model.eval()
    try:
        data = build_calibration_data(model, tokenizer, config)
        minds = list(range(config.minds))
        with torch.no_grad():
            plain = _scored_logprobs(model, data)
        search: list[tuple[float, float]] = []

        def kl_at(sigma: float) -> float:
            kl = mean_token_kl(pop, data, sigma, minds, plain)
            search.append((sigma, kl))
            return kl

        sigma, kl, reached, message = _search(kl_at, config.target_kl, config)
        curve: list[CalibrationPoint] = []
        plain_coherence = None
        if config.curve_factors:
            eos, pad = _eos_ids(model, tokenizer), _pad_id(tokenizer)
            _, plain_coherence, plain_rep = answer_stats(pop, data, 0.0, [-1], config.answer_tokens, tokenizer,
                                                         eos, pad)
            curve.append(CalibrationPoint(0.0, 0.0, 0.0, plain_coherence, plain_rep, False))
            known = dict(search)
            for factor in sorted(set(config.curve_factors) | {1.0}):
                s = sigma * factor
                k = known[s] if s in known else mean_token_kl(pop, data, s, minds, plain)
                div, coh, rep = answer_stats(pop, data, s, minds, config.answer_tokens, tokenizer, eos, pad)
                collapsed = coh < plain_coherence - config.coherence_margin or rep >= 0.5
                curve.append(CalibrationPoint(s, k, div, coh, rep, collapsed))
    finally:
        model.train(was_training)
    result = CalibrationResult(sigma=sigma, kl=kl, target_kl=config.target_kl, reached=reached,
                               sigma_scale=pop.sigma_scale, noise=pop.noise, norms=pop.norms,
                               plain_coherence=plain_coherence, curve=curve, search=search, message=message)
    if not reached:
        if config.strict:
            raise ValueError(message)
        warnings.warn(message, CalibrationWarning, stacklevel=2)
    point = result.point
    if point is not None and point.collapsed:
        warnings.warn(f"at the calibrated sigma {sigma:.4g} the minds collapse (coherence {point.coherence:.2f} vs "
                      f"the plain model's {plain_coherence:.2f}, repetition {point.repetition:.0%}); lower target_kl",
                      CalibrationWarning, stacklevel=2)
    return result


# ----------------------------------------------------------------------------- plot


def plot_calibration(result: CalibrationResult, path: str | Path, title: str | None = None) -> Path:
    """Save the curve as a PNG: (left) KL and diversity vs sigma, (right) diversity vs coherence,
    with the plain model's coherence and the calibrated sigma marked."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in result.curve if p.sigma > 0]
    if not points:
        raise ValueError("the result has no curve to plot; calibrate with curve_factors")
    sigmas = [p.sigma for p in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(sigmas, [p.kl for p in points], "o-", color="tab:blue", label="KL(plain || mind)")
    ax1.axhline(result.target_kl, color="tab:blue", ls=":", lw=1, label="target KL")
    ax1.axvline(result.sigma, color="grey", ls="--", lw=1)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.set_xlabel(f"sigma ({result.sigma_scale})")
    ax1.set_ylabel("mean per-token KL (nats)", color="tab:blue")
    twin = ax1.twinx()
    twin.plot(sigmas, [p.diversity for p in points], "s-", color="tab:orange", label="diversity")
    twin.set_ylabel("diversity (pairwise bigram Jaccard distance)", color="tab:orange")
    twin.set_ylim(0, 1)
    ax1.legend(loc="upper left", fontsize=8)
    ax2.plot([p.coherence for p in points], [p.diversity for p in points], "o-", color="tab:green")
    for p in points:
        ax2.annotate(f"{p.sigma:.3g}" + (" (calibrated)" if p.sigma == result.sigma else "")
                     + (" collapsed" if p.collapsed else ""), (p.coherence, p.diversity), fontsize=7)
    if result.plain_coherence is not None:
        ax2.axvline(result.plain_coherence, color="grey", ls="--", lw=1, label="plain greedy")
        ax2.legend(loc="best", fontsize=8)
    ax2.set_xlabel("coherence (mean token log-lik. under the plain model)")
    ax2.set_ylabel("diversity")
    fig.suptitle(title or f"sigma calibration (target KL {result.target_kl:g}, {result.noise}, {result.norms})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
