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

A calibrated population is built from outside :class:`~manyminds.population.Population`:
:func:`calibrated_population` calibrates, then returns ``population.with_sigma(result.sigma)``.

Example:
    >>> pop, result = calibrated_population(model, tok)                      # default target
    >>> result = calibrate_sigma(model, tok, CalibrationConfig(target_kl=0.05))
    >>> result.sigma, result.table()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from manyminds.rows import (
    grid_ids,
    group_rows,
    pad_id_of,
    pad_left,
    repeat_prompts,
    tokenize_prompts,
    user_prompts,
)

from .calibration_config import (
    CalibrationConfig,
    CalibrationData,
    CalibrationPoint,
    CalibrationResult,
    CalibrationWarning,
    plot_calibration,
)
from .collapse import is_degenerate
from .norms import unwrap_model
from .population import Population

__all__ = ["CalibrationConfig", "CalibrationData", "CalibrationPoint", "CalibrationResult", "CalibrationWarning",
           "answer_diversity", "answer_stats", "build_calibration_data", "calibrate_sigma", "calibrated_population",
           "mean_token_kl", "plot_calibration", "token_kl"]

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


def _encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (:func:`manyminds.rows.tokenize_prompts`): a user turn of the chat
    template when the tokenizer has one, else the raw text.

    Unlike TRL's rule (plain text encoded as text), a calibration prompt is always a string
    (:class:`CalibrationConfig` ``prompts``) and is chat-formatted for a chat model, as documented
    (docs/population.md) and as ``manyminds generate --prompt`` formats its prompts.
    """
    rows = tokenize_prompts(tokenizer, user_prompts(tokenizer, prompts))
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
    pad = pad_id_of(tokenizer)
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


def mean_token_kl(population: Population, data: CalibrationData, sigma: float, minds: Sequence[int],
                  plain_logprobs: torch.Tensor | None = None) -> float:
    """Mean over ``minds`` and scored tokens of ``KL(plain || mind)`` at base sigma ``sigma``
    (the minds of ``population.with_sigma(sigma)``; ``population`` is not changed).

    ``plain_logprobs`` (``[K, V]``, from the plain model) is computed when not given.
    """
    model = population.model
    at_sigma = population.with_sigma(float(sigma))
    with torch.no_grad():
        if plain_logprobs is None:
            plain_logprobs = _scored_logprobs(model, data)
        rows = data.text_ids.shape[0]
        total = 0.0
        for m in minds:
            with at_sigma.minds([int(m)] * rows):
                total += float(token_kl(plain_logprobs, _scored_logprobs(model, data)).mean())
    return total / len(minds)


def answer_stats(population: Population, data: CalibrationData, sigma: float, minds: Sequence[int],
                 answer_tokens: int, tokenizer, eos_ids: set[int], pad_id: int) -> tuple[float, float, float]:
    """``(diversity, coherence, repetition)`` of the greedy answers of the minds of
    ``population.with_sigma(sigma)`` (see the module docstring); ``minds=[-1]`` measures the plain model."""
    model = population.model
    n = data.prompt_ids.shape[0]
    ids = grid_ids(minds, n)  # prompt-major rows: [N * M]
    prompt = repeat_prompts(data.prompt_ids, len(minds))  # [N*M, P]
    mask = repeat_prompts(data.prompt_mask, len(minds))  # [N*M, P]
    with torch.no_grad(), population.with_sigma(float(sigma)).minds(ids):
        out = model.generate(input_ids=prompt, attention_mask=mask, do_sample=False,
                             max_new_tokens=answer_tokens, pad_token_id=pad_id)
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
    diversity = sum(map(answer_diversity, group_rows(content, len(minds)))) / n  # over [N][M] answers
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


def calibrate_sigma(model_or_population: nn.Module | Population, tokenizer=None,
                    config: CalibrationConfig | dict | None = None, **population_kwargs) -> CalibrationResult:
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
            eos, pad = _eos_ids(model, tokenizer), pad_id_of(tokenizer)
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


def calibrated_population(model_or_population: nn.Module | Population, tokenizer=None,
                          config: CalibrationConfig | dict | None = None,
                          **population_kwargs) -> tuple[Population, CalibrationResult]:
    """A population whose sigma is calibrated on its model: :func:`calibrate_sigma`, then
    ``population.with_sigma(result.sigma)``.

    Args:
        model_or_population: a model (``population_kwargs`` build the population, e.g.
            ``seed=1, sigma_scale="weight"``) or a :class:`~manyminds.population.Population`
            (its settings are used; it is not changed).
        tokenizer: the model's tokenizer (default: the population's); the result keeps it.
        config: :class:`CalibrationConfig` or a dict of its fields. Without ``curve_factors``
            (``None``, or a dict without that key) only the calibrated point of the curve is
            measured (the collapse check); pass ``curve_factors`` for the whole curve.

    Returns:
        ``(population, result)``: the calibrated population (``population.base_sigma ==
        result.sigma``) and the :class:`CalibrationResult`.

    Raises:
        TypeError: ``sigma`` among ``population_kwargs`` (calibration chooses it).
        ValueError: as :func:`calibrate_sigma`.
    """
    if "sigma" in population_kwargs:
        raise TypeError("calibrated_population chooses sigma itself; pass config={'target_kl': ...} instead of sigma")
    if config is None or isinstance(config, dict) and "curve_factors" not in config:
        config = {**(config or {}), "curve_factors": (1.0,)}
    if not isinstance(model_or_population, Population):
        model_or_population = Population(model_or_population, sigma=0.0, tokenizer=tokenizer, **population_kwargs)
    elif population_kwargs:
        raise TypeError("pass population settings to Population(...), not to calibrated_population, when "
                        "calibrating a population")
    result = calibrate_sigma(model_or_population, tokenizer=tokenizer, config=config)
    population = model_or_population.with_sigma(result.sigma)
    if tokenizer is not None:
        population.tokenizer = tokenizer
    return population, result


# ----------------------------------------------------------------------------- plot
