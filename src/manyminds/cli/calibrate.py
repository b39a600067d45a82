"""``manyminds calibrate``: pick sigma for a model from a target KL, print the sigma curve, save a plot.

The options are the fields of :class:`manyminds.population.calibrate.CalibrationConfig` (same names,
same help) plus the population's ``--norms``, ``--noise`` and ``--sigma-scale``. Writes
``calibration.json`` and ``calibration.png`` under ``--out-dir`` (default ``runs/calibrate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from manyminds.cli.common import (
    RUNS_DIR,
    CLIError,
    ModelOption,
    NoiseOption,
    NormsOption,
    console,
    err_console,
    load_model,
    make_table,
)


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate(
        model: ModelOption = None,
        target_kl: Annotated[float | None, typer.Option(
            "--target-kl", help="target mean per-token KL(plain || mind) in nats (default: the library's)")] = None,
        prompt: Annotated[list[str] | None, typer.Option(
            "--prompt", help="calibration prompt (repeat); default: the model continues its BOS token")] = None,
        minds: Annotated[int, typer.Option("--minds", min=2, help="minds averaged in KL and compared")] = 4,
        num_texts: Annotated[int, typer.Option("--num-texts", min=1, help="sampled calibration texts")] = 8,
        text_tokens: Annotated[int, typer.Option("--text-tokens", min=1,
                                                 help="sampled tokens per calibration text (scored in KL)")] = 32,
        answer_tokens: Annotated[int, typer.Option("--answer-tokens", min=1,
                                                   help="greedy answer length for diversity / coherence")] = 24,
        curve: Annotated[str, typer.Option(
            "--curve", help="the curve's sigmas as comma-separated multiples of the calibrated one")] = "0.25,0.5,1,2,4",
        sigma_scale: Annotated[str, typer.Option(
            "--sigma-scale", help="absolute (the paper) or weight (sigma x rms of each norm's weight)")] = "absolute",
        norms: NormsOption = "all",
        noise: NoiseOption = "additive",
        seed: Annotated[int, typer.Option("--seed", help="population seed and calibration-text seed")] = 0,
        sigma_max: Annotated[float, typer.Option("--sigma-max", help="largest sigma searched")] = 1.0,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where calibration.json and calibration.png go")] = Path(RUNS_DIR) / "calibrate",
    ):
        """Pick sigma for a model from a target KL(plain || mind) by a short search; print the
        sigma -> (KL, diversity, coherence) curve (collapsed points flagged), save a plot and JSON."""
        import json
        import warnings

        from manyminds.population import (
            CalibrationConfig,
            Population,
            calibrate_sigma,
            plot_calibration,
        )

        try:
            factors = tuple(float(f) for f in curve.split(",") if f.strip())
        except ValueError:
            raise CLIError(f"--curve takes comma-separated numbers, e.g. 0.5,1,2; got {curve!r}") from None
        settings = {"minds": minds, "num_texts": num_texts, "seed": seed, "sigma_max": sigma_max,
                    "prompts": prompt or None, "text_tokens": text_tokens, "answer_tokens": answer_tokens,
                    "curve_factors": factors or (1.0,)}
        if target_kl is not None:
            settings["target_kl"] = target_kl
        config = CalibrationConfig(**settings)
        lm, tok = load_model(model)
        pop = Population(lm, sigma=0.0, seed=seed, norms=norms, noise=noise, sigma_scale=sigma_scale, tokenizer=tok)
        with warnings.catch_warnings(record=True) as caught, err_console().status("calibrating sigma..."):
            warnings.simplefilter("always")
            result = calibrate_sigma(pop, config=config)
        for w in caught:
            if w.category.__name__ == "CalibrationWarning":
                err_console().print(f"[yellow]warning:[/yellow] {w.message}", highlight=False, soft_wrap=True)
        name = model or "default"
        table = make_table(f"{name}: sigma curve ({sigma_scale}, {noise}, norms={norms}; target KL "
                           f"{result.target_kl:g})", ["sigma", "KL", "diversity", "coherence", "repetition", "note"])
        for row in result.table():
            note = "plain model" if row["sigma"] == 0 else ("calibrated" if row["calibrated"] else "")
            if row["collapsed"]:
                note = f"{note} collapsed".strip()
            table.add_row(f"{row['sigma']:.4g}", f"{row['kl']:.4f}", f"{row['diversity']:.3f}",
                          f"{row['coherence']:.3f}", f"{row['repetition']:.0%}", note)
        console().print(table)
        console().print(f"calibrated sigma: [bold]{result.sigma:.4g}[/bold] ({sigma_scale}), KL {result.kl:.4f}"
                        f"{'' if result.reached else ' (target not reached)'}")
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"command": "calibrate", "model": name, "seed": seed, **result.to_dict()}
        (out_dir / "calibration.json").write_text(json.dumps(payload, indent=2))
        plot = plot_calibration(result, out_dir / "calibration.png", title=f"{name}: sigma calibration")
        err_console().print(f"wrote {out_dir / 'calibration.json'}, {plot}", highlight=False, soft_wrap=True)
