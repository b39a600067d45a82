"""lm-evaluation-harness integration (extra ``eval``): the registered lm-eval model ``manyminds``
and a bundled task ``manyminds_arith``.

Importing this package registers the model with lm-eval (lm-eval 0.4 has no plugin entry points
for models). From the command line, ``python -m manyminds.harness`` is ``lm_eval`` with the model
registered and :data:`TASKS_DIR` on the task path::

    python -m manyminds.harness --model manyminds \\
        --model_args pretrained=tiny-arith,sigma=0.05,mind=3 --tasks manyminds_arith

From Python::

    import lm_eval, manyminds.harness
    from lm_eval.tasks import TaskManager
    lm_eval.simple_evaluate(model="manyminds", model_args="pretrained=tiny-arith,mind=3",
                            tasks=["manyminds_arith"],
                            task_manager=TaskManager(include_path=manyminds.harness.TASKS_DIR))

See ``docs/lm_eval.md``.
"""

from pathlib import Path

try:
    import lm_eval  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("manyminds.harness needs lm-evaluation-harness: pip install 'manyminds[eval]'") from err

from .model import ManyMindsLM, vote_index

TASKS_DIR = str(Path(__file__).parent / "tasks")
"""Folder of the bundled lm-eval tasks (pass it as ``--include_path`` / ``TaskManager(include_path=...)``)."""

__all__ = ["TASKS_DIR", "ManyMindsLM", "vote_index"]
