"""``python -m manyminds.harness ARGS``: the ``lm_eval`` command with the ``manyminds`` model
registered and the bundled tasks (:data:`manyminds.harness.TASKS_DIR`) on the task path unless
``--include_path`` is given. Errors in the input (a missing model or data file, a bad model arg)
end in one line and exit status 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    from manyminds.harness import TASKS_DIR

    if argv and not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", TASKS_DIR]
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm_eval", *argv]  # lm-eval's CLI parses sys.argv itself
    try:
        cli_evaluate()
    except (FileNotFoundError, ValueError, KeyError) as err:
        if verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message} (--verbose shows the traceback)", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
