"""Data loader of the bundled lm-eval tasks (referenced from their YAML as ``!function utils.load_jsonl``).

lm-eval imports this file from the folder of the YAML that names it, so relative ``data_files``
are read from that folder, wherever it is installed or copied.
"""

import json
from pathlib import Path


def load_jsonl(data_files: dict, **_unused):
    """``{split: path}`` of JSONL files (one JSON object per line) -> a ``datasets.DatasetDict``.

    Extra keyword arguments (lm-eval passes the task's metadata) are ignored.

    Raises:
        FileNotFoundError: a file does not exist (the message names it and the YAML key).
        ValueError: a line is not a JSON object, or a field holds over
            :data:`manyminds.row_sizes.MAX_FIELD_CHARS` characters (the message names the file and line).
    """
    import datasets

    from manyminds.row_sizes import check_row_sizes

    if not isinstance(data_files, dict) or not data_files:
        raise ValueError("dataset_kwargs.data_files must map split names to JSONL files, e.g. {test: arith_test.jsonl}")
    base = Path(__file__).parent
    splits = {}
    for split, name in data_files.items():
        path = Path(str(name)).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise FileNotFoundError(f"task data file {path} does not exist (dataset_kwargs.data_files.{split} of a "
                                    f"task YAML in {base}); fix the path, relative paths are read from the "
                                    f"YAML's folder")
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}); one JSON object per line") from None
                if not isinstance(row, dict):  # a data error, reported like the JSON errors above
                    raise ValueError(  # noqa: TRY004
                        f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                check_row_sizes(row, f"{path}:{number}")
                rows.append(row)
        if not rows:
            raise ValueError(f"task data file {path} holds no rows")
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


def final_answers(resps, docs):
    """lm-eval ``custom`` filter: each response -> its final answer as manyminds scores it
    (:func:`manyminds.tasks.extract_answer`: the normalized text after the last ``####``), or
    ``"[invalid]"``. With the reference answer normalized the same way, ``exact_match`` is then
    exactly :func:`manyminds.tasks.verify_answer`."""
    from manyminds.tasks import extract_answer

    return [[extract_answer(r) or "[invalid]" for r in rs] for rs in resps]
