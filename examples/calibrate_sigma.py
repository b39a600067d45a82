"""Evidence for issue 12 (sigma half of part 5): one calibration target gives comparable minds on the
0.8M character model and on SmolLM2-135M-Instruct.

For each model, ``calibrate_sigma`` with the library's defaults (target mean per-token
KL(plain || mind), calibration text sampled by the plain model from its BOS token, so no prompt
has to suit the model's vocabulary) picks sigma; the script prints the sigma -> (KL, diversity,
coherence) curve, checks the issue's hand-found sigmas (tiny-arith useful at 0.05-0.1, SmolLM2
good near 0.01 and garbage at 0.05) against the curve, and writes one PNG per model and a JSON.

    python examples/calibrate_sigma.py                       # both models, ~5-10 min on 2 cores
    python examples/calibrate_sigma.py --models tiny-arith   # one model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import manyminds
from manyminds.population import CalibrationConfig, Population, calibrate_sigma, plot_calibration
from manyminds.population.calibrate import (
    _eos_ids,
    _scored_logprobs,
    answer_stats,
    build_calibration_data,
    mean_token_kl,
)
from manyminds.rows import pad_id_of

# sigmas the issue found by hand (absolute, additive, all norms)
HAND_SIGMAS = {"tiny-arith": (0.05, 0.1), "smollm2-135m-instruct": (0.01, 0.02, 0.05)}


def fixed_points(pop, tok, config, sigmas):
    """KL, diversity, coherence, repetition at given absolute sigmas, on the same calibration text."""
    model = pop.model
    data = build_calibration_data(model, tok, config)
    with torch.no_grad():
        plain = _scored_logprobs(model, data)
    eos, pad = _eos_ids(model, tok), pad_id_of(tok)
    minds = list(range(config.minds))
    rows = []
    for s in sigmas:
        kl = mean_token_kl(pop, data, s, minds, plain)
        div, coh, rep = answer_stats(pop, data, s, minds, config.answer_tokens, tok, eos, pad)
        rows.append({"sigma": s, "kl": kl, "diversity": div, "coherence": coh, "repetition": rep})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-arith", "smollm2-135m-instruct"])
    parser.add_argument("--sigma-scale", default="absolute", choices=["absolute", "weight"])
    parser.add_argument("--target-kl", type=float, default=None, help="default: the library's")
    parser.add_argument("--curve", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                        help="the curve's sigmas as multiples of the calibrated sigma")
    parser.add_argument("--arith-prompts", type=int, default=0,
                        help="calibrate tiny-arith on this many arith test prompts instead of its BOS samples")
    parser.add_argument("--no-hand", action="store_true", help="skip the issue's hand-picked sigmas")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--out", default="docs/img", help="folder for calibrate_<model>.png and calibrate_sigma.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {"curve_factors": tuple(args.curve)}
    if args.target_kl is not None:
        settings["target_kl"] = args.target_kl
    base_config = CalibrationConfig(**settings)
    out = Path(args.out)
    report = {"target_kl": base_config.target_kl, "arith_prompts": args.arith_prompts, "sigma_scale": args.sigma_scale, "models": {}}
    for name in args.models:
        start = time.time()
        model, tok = manyminds.load(name)
        model.eval()
        config = base_config
        if name == "tiny-arith" and args.arith_prompts:
            from manyminds.tasks.arith import arith_rows

            prompts = [row["prompt"] for row in arith_rows("test", args.arith_prompts, seed=0)]
            config = CalibrationConfig(**{**settings, "prompts": prompts})
        hand = [] if args.no_hand else fixed_points(Population(model, sigma=0.0), tok, config, HAND_SIGMAS.get(name, ()))
        for row in hand:
            print(f"{name}: sigma {row['sigma']:g} (absolute, hand-picked in issue 12): KL {row['kl']:.4f}, diversity "
                  f"{row['diversity']:.3f}, coherence {row['coherence']:.3f}, repetition {row['repetition']:.0%}",
                  flush=True)
        hand_seconds = time.time() - start
        pop = Population(model, sigma=0.0, sigma_scale=args.sigma_scale, tokenizer=tok)
        result = calibrate_sigma(pop, config=config)
        seconds = time.time() - start
        plot = plot_calibration(result, out / f"calibrate_{name}.png", title=f"{name}: sigma calibration")
        print(f"\n{name} ({args.sigma_scale}; load + hand-picked points {hand_seconds:.0f} s, total {seconds:.0f} s) "
              f"-> {plot}")
        print(f"{'sigma':>9} {'KL':>8} {'diversity':>9} {'coherence':>9} {'repet.':>6}  note")
        for row in result.table():
            note = "plain" if row["sigma"] == 0 else ("calibrated" if row["calibrated"] else "")
            note += " collapsed" if row["collapsed"] else ""
            print(f"{row['sigma']:9.4g} {row['kl']:8.4f} {row['diversity']:9.3f} {row['coherence']:9.3f} "
                  f"{row['repetition']:6.0%}  {note}", flush=True)
        print(f"search (sigma, KL): {[(round(s, 5), round(k, 4)) for s, k in result.search]}")
        report["models"][name] = {"seconds": round(seconds, 1), "hand_seconds": round(hand_seconds, 1),
                                  "prompts": config.prompts, **result.to_dict(), "hand_sigmas": hand}
    (out / "calibrate_sigma.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'calibrate_sigma.json'}")


if __name__ == "__main__":
    main()
