"""The settings and results of sigma calibration (:mod:`manyminds.population.calibrate`): its config,
the calibration text, one point of the curve, the result, its warning and its plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = ["DEFAULT_TARGET_KL", "CalibrationConfig", "CalibrationData", "CalibrationPoint", "CalibrationResult",
           "CalibrationWarning", "plot_calibration"]

DEFAULT_TARGET_KL = 0.05


class CalibrationWarning(UserWarning):
    """The calibration target could not be reached in the sigma range; the best sigma found is used."""


@dataclass
class CalibrationConfig:
    """Settings of :func:`calibrate_sigma` and :func:`calibrated_population`."""

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
