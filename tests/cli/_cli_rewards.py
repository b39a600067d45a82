"""A reward for the CLI tests that varies between random completions, so a few GRPO steps move the
weights of a random model (``answer`` would score every completion 0 there: zero advantages)."""


def text_hash_reward(prompts, completions, **kwargs):
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % 101) / 100 for t in texts]
