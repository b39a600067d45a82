"""``ManyMindsLM``: lm-evaluation-harness's ``HFLM`` with every model call run as one mind, or
generation tasks answered by a majority vote of minds (or of α-Rényi ensemble members).

Modes (``--model_args``):

- ``mind=M``: every forward of ``loglikelihood``, ``loglikelihood_rolling`` and
  ``generate_until`` runs inside ``Population(model, sigma, seed, norms, noise).minds([M] * B)``
  (``B``: the rows of that call). ``mind=-1`` is the unperturbed model.
- ``minds=N``: generation tasks only. Each request is generated once by each of minds
  ``0 .. N-1`` (``N * B`` rows, prompt-major, at most ``max_batch_size`` rows per ``generate``
  call). Each continuation is cut at the
  task's stop sequences exactly as ``HFLM`` cuts it, its final answer is
  :func:`manyminds.tasks.extract_answer` (the text after the last ``####``), and the answers vote
  (:func:`manyminds.metrics.majority_vote`; ties go to the lowest mind). Continuations without an
  answer do not vote, unless no mind gives one: then the stripped continuations themselves vote.
  The returned continuation is that of the first mind whose answer is the majority, so the
  task's own filters and metrics then score the majority answer.
- ``members=DIR`` (a folder written by ``EnsembleLoRA.save_members``) with ``member=K``: one
  member, inside ``ens.members([K] * B)``; without ``member``: the majority vote of all members,
  as for ``minds=N``.
"""

from __future__ import annotations

import difflib
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import postprocess_generated_text

from manyminds.rows import grid_ids, group_rows, pad_id_of, repeat_prompts
from manyminds.upstream import check_overrides

__all__ = ["ManyMindsLM", "vote_index"]

_OWN_ARGS = ("sigma", "seed", "mind", "minds", "norms", "noise", "members", "member")


def vote_index(texts: list[str]) -> tuple[int, str]:
    """The position of the winning continuation among ``texts`` (one per voter) and its vote key.

    A continuation's key is its final answer (:func:`manyminds.tasks.extract_answer`); those
    without one do not vote unless none has one, in which case the stripped texts vote. Ties go
    to the key seen first; the winner is the first continuation with the majority key.

    >>> vote_index([" 2+2=5\\n#### 5", " 2+2=4\\n#### 4", "#### 4"])
    (1, '4')
    """
    from manyminds.metrics import majority_vote
    from manyminds.tasks import extract_answer

    keys = [extract_answer(t) for t in texts]
    if all(k is None for k in keys):
        keys = [t.strip() or None for t in texts]
    winner = majority_vote(keys)
    if winner is None:  # every continuation is empty
        return 0, ""
    return next(i for i, k in enumerate(keys) if k is not None and k.strip() == winner), winner


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"model arg {name}={value!r}: pass an integer >= {low}")
    return value


def _resolve_pretrained(pretrained):
    """A zoo name -> its folder (shipped, or built on first use); a missing local folder -> a clear error
    instead of a model-hub lookup."""
    if not isinstance(pretrained, str):
        return pretrained
    from manyminds import zoo

    if pretrained in zoo.ZOO:
        return zoo.resolve(pretrained)
    if zoo.looks_like_path(pretrained) and not Path(pretrained).expanduser().is_dir():
        raise FileNotFoundError(f"model arg pretrained={pretrained!r}: no model folder there; pass an existing "
                                f"save_pretrained folder, a hub id or a zoo name ({', '.join(zoo.ZOO)})")
    return pretrained


@register_model("manyminds")
class ManyMindsLM(HFLM):
    """``HFLM`` evaluating one population mind, one ensemble member, or their majority vote.

    Args:
        pretrained: model folder, hub id, zoo name (``tiny-arith``, ...) or a loaded model.
        sigma: noise scale of the population (default 0.02, the paper's).
        seed: population seed; mind ``m`` is a pure function of (seed, m, layer).
        mind: evaluate this one mind (``-1``: the unperturbed model).
        minds: answer generation tasks by majority vote of minds ``0 .. minds-1``.
        norms: ``"all"``, ``"blocks"`` or ``"final"`` (see :class:`~manyminds.population.Population`).
        noise: ``"additive"`` or ``"multiplicative"``.
        members: folder of a saved α-Rényi ensemble (``EnsembleLoRA.save_members``); replaces the
            population options.
        member: with ``members``: evaluate this member; without it the members vote.
        device: default ``"cuda"`` when available, else ``"cpu"``.
        **kwargs: everything ``HFLM`` takes (``batch_size``, ``dtype``, ``add_bos_token``, ...).

    Exactly one of ``mind``, ``minds`` or ``members`` must be given.

    Attributes:
        votes: in a voting mode, one record per answered request: ``{"prompt", "voters",
            "continuations", "answer", "winner"}`` (the decoded prompt, voter ids, each voter's cut
            continuation, the majority key, the id whose continuation was returned).
    """

    def __init__(self, pretrained, sigma: float = 0.02, seed: int = 0, mind: int | None = None,
                 minds: int | None = None, norms: str = "all", noise: str = "additive",
                 members: str | None = None, member: int | None = None, device: str | None = None,
                 **kwargs):
        check_overrides("lm_eval")  # _model_call, _model_generate below
        for key in kwargs:
            close = difflib.get_close_matches(key, _OWN_ARGS, n=1, cutoff=0.75)
            if close:
                raise ValueError(f"unknown model arg {key!r}; did you mean {close[0]!r}?")
        if members is None:
            if member is not None:
                raise ValueError("model arg member=K needs members=DIR (a folder written by "
                                 "EnsembleLoRA.save_members)")
            if (mind is None) == (minds is None):
                raise ValueError("pass exactly one of mind=M (evaluate one mind) or minds=N (majority vote of "
                                 "minds 0..N-1), or members=DIR for a saved ensemble")
            if mind is not None:
                _check_int("mind", mind, -1)
            else:
                _check_int("minds", minds, 1)
            if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
                raise ValueError(f"model arg sigma={sigma!r}: pass a number >= 0 (the paper uses 0.02)")
        elif mind is not None or minds is not None:
            raise ValueError("members=DIR evaluates an ensemble: pass member=K (or nothing, to vote), not "
                             "mind/minds")
        else:
            if member is not None:
                _check_int("member", member, 0)
            if not Path(str(members)).expanduser().is_dir():  # before loading the model
                raise FileNotFoundError(f"model arg members={members!r}: no ensemble checkpoint there; write one "
                                        "with EnsembleLoRA.save_members(dir)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"model arg seed={seed!r}: pass an integer")  # noqa: TRY004 (bad input, as above)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained=_resolve_pretrained(pretrained), device=device, **kwargs)

        self.population = self.ensemble = None
        if members is None:
            from manyminds.population import Population

            self.population = Population(self.model, sigma=float(sigma), seed=seed, norms=norms, noise=noise)
            self.single = mind
            self.voters = None if minds is None else list(range(minds))
        else:
            from manyminds.ensemble import EnsembleLoRA

            self.ensemble = EnsembleLoRA.from_members(self.model, members)
            if member is not None and member >= self.ensemble.num_members:
                raise ValueError(f"model arg member={member}: {members} holds members 0..{self.ensemble.num_members - 1}")
            self.single = member
            self.voters = None if member is not None else list(range(self.ensemble.num_members))
        self.votes: list[dict] = []

    # ------------------------------------------------------------------ routing

    def _route(self, ids: list[int]) -> AbstractContextManager:
        """Row ``b`` of the forwards inside runs mind (or member) ``ids[b]``."""
        if self.ensemble is not None:
            return self.ensemble.members(ids)
        return self.population.minds(ids)

    def _refuse_scores(self, what: str):
        who = "minds" if self.ensemble is None else "members"
        one = "mind=M" if self.ensemble is None else "member=K"
        raise ValueError(f"the {who} vote answers generation (generate_until) tasks only; this task asks for "
                         f"{what}: evaluate one with {one}")

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if self.voters is not None:
            self._refuse_scores("log-likelihoods")
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self.voters is not None:
            self._refuse_scores("rolling log-likelihoods")
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if self.voters is not None:  # e.g. batch_size=auto probing with a forward
            self._refuse_scores("a plain forward (batch_size=auto probes one; pass a number)")
        with self._route([self.single] * inps.shape[0]):
            return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        """One mind for every row, or every voter for every row and the majority's row returned.

        ``context``: ``[B, T]`` left-padded prompt ids; returns ``[B, T + new]`` as ``HFLM`` does.
        """
        if self.voters is None:
            with self._route([self.single] * context.shape[0]):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
        n, (B, T) = len(self.voters), context.shape
        rows = repeat_prompts(context, n)  # [B*n, T], prompt-major: row b*n + j is voter j
        mask = generation_kwargs.pop("attention_mask", None)
        mask = None if mask is None else repeat_prompts(mask, n)  # [B*n, T]
        voters = grid_ids(self.voters, B)  # [B*n]
        step = max(int(self.max_batch_size or B * n), 1)  # rows per generate call: minds=1000 is not one batch
        outs = []
        for start in range(0, B * n, step):
            kwargs = dict(generation_kwargs)
            if mask is not None:
                kwargs["attention_mask"] = mask[start:start + step]
            with self._route(voters[start:start + step]):
                out = super()._model_generate(rows[start:start + step], max_length, stop, **kwargs)  # [b, T + new_b]
            outs += list(out)
        picks = []
        for b, group in enumerate(group_rows(outs, n)):  # [B][n]
            texts = [self._cut(row[T:].tolist(), stop) for row in group]
            j, answer = vote_index(texts)
            picks.append(group[j])
            self.votes.append({"prompt": self.tok_decode(context[b].tolist()), "voters": list(self.voters),
                               "continuations": texts, "answer": answer, "winner": self.voters[j]})
        # chunks stop at different lengths: right-pad as one generate call pads its finished rows
        return torch.nn.utils.rnn.pad_sequence(picks, batch_first=True,
                                               padding_value=pad_id_of(self.tokenizer))  # [B, T + new]

    def _cut(self, tokens: list[int], stop: list[str]) -> str:
        """A continuation's text exactly as ``HFLM.generate_until`` returns it (decoded, thinking
        stripped, cut at the first stop sequence)."""
        think = self.think_end_token
        if isinstance(think, int) and think in tokens:
            tokens = tokens[len(tokens) - tokens[::-1].index(think):]
        text = self.tok_decode(tokens)
        if isinstance(think, int):
            text = text.lstrip()
        return postprocess_generated_text(text, stop, think if isinstance(think, str) else None)
