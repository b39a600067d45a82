"""A reader of short free-form answers: is an accepted answer named in the reply's first sentence?

Chat models answer "What is the capital of France?" in prose ("The capital of France is Paris."),
not with a ``####`` line, and the answer is a word, not a number (so neither
:func:`manyminds.tasks.extract_answer` nor :func:`manyminds.rl.free_form.final_number` reads it).
Here a reply is correct when, after :func:`normalize_text` of both sides, some accepted answer
occurs as a whole run of words in the reply's first sentence (:func:`first_sentence`) and that
occurrence is not negated (:func:`names_answer`)::

    >>> is_correct("The capital of Australia is Canberra, not Sydney.", ["Canberra"])
    True
    >>> is_correct("It is not Paris.", ["Paris"])
    False
    >>> is_correct("Parisian food is great.", ["Paris"])      # whole words only
    False

What the reader does to keep false positives out, and what it still lets through:

- Only the first sentence counts: a model that names a wrong city, then rambles through a list of
  cities, is wrong. ``"Sure! The capital is Paris."`` is therefore wrong too (its first sentence is
  ``"Sure!"``); ask for a short answer in the prompt.
- Whole words, articles dropped: ``"Paris"`` does not match ``"Parisian"``, ``"mice"`` does not
  match ``"mouse"``, ``"the Pacific"`` matches ``"Pacific"``.
- Negation: an occurrence with ``not``/``no``/``never``/``isn't``/... among the 3 words before it
  does not count, unless ``but``/``rather``/``instead``/``actually`` comes between
  (``"not Sydney but Canberra"`` names Canberra).
- Still accepted (a limitation): a hedge that lists the answer among others
  (``"Sydney, Melbourne or Canberra"``), and ``"America"`` inside ``"South America"``. A question
  whose own text holds an accepted answer would accept an echo of the question; the question-file
  reader (:func:`manyminds.tasks.facts.read_facts`) refuses such questions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["answer_key", "first_sentence", "is_correct", "names_answer", "normalize_text", "reply_key"]

ARTICLES = frozenset({"a", "an", "the"})
NEGATIONS = frozenset({"not", "no", "never", "isnt", "arent", "wasnt", "werent", "doesnt", "dont",
                       "didnt", "neither", "nor", "cannot", "cant", "wont"})
CONTRASTS = frozenset({"but", "rather", "instead", "actually"})
NEGATION_WINDOW = 3
"""How many words before an occurrence are searched for a negation."""

# Words whose trailing period does not end a sentence ("Mt. Everest", "St. Petersburg").
ABBREVIATIONS = frozenset({"mt", "st", "dr", "mr", "mrs", "ms", "jr", "sr", "vs", "approx", "ca",
                           "etc"})
_APOSTROPHES = re.compile(r"['\u2019\u02bc`]")
_POSSESSIVE = re.compile(r"['\u2019\u02bc`]s\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A word: a number with its sign and decimals ("-18.0"; a "-" after a letter or digit is a hyphen,
# not a sign: "K-30", "1-2"), or a run of letters and digits ("h2o").
_WORD = re.compile(r"(?<![0-9a-z])-?\d+(?:\.\d+)?|[0-9a-z]+")
# A sentence ends at . ! or ? followed by white space; "D.C. is" and "J. K. Rowling" do not end one
# (a capital letter before the period is an initial), nor do the ABBREVIATIONS.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u2019\u201d)\]]*\s+")


def _fold(text: str) -> str:
    """Lower case without accents; NFKD also maps subscripts and ligatures (``"H₂O" -> "h2o"``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _number(word: str) -> str:
    """``"-18.0" -> "-18"``, ``"2.50" -> "2.5"``, ``"-0" -> "0"``; other words unchanged."""
    if "." in word and word[-1] == "0":
        word = word.rstrip("0").rstrip(".")
    return "0" if word == "-0" else word


def _words(text: str) -> list[str]:
    """The words of ``text`` after folding: a possessive ``'s`` dropped (``"Newton's"`` ->
    ``"newton"``), other apostrophes removed (``"isn't" -> "isnt"``), digit groups joined
    (``"1,000" -> "1000"``), numbers kept whole with sign and decimals (``"-18.0°C"`` ->
    ``["-18", "c"]``), every other non-alphanumeric character a separator."""
    s = _THOUSANDS.sub("", _APOSTROPHES.sub("", _POSSESSIVE.sub("", _fold(text))))
    return [_number(w) for w in _WORD.findall(s)]


def normalize_text(text: str) -> str:
    """Canonical form of a short answer or reply: folded words without articles, space-joined.

        >>> normalize_text("The Pacific Ocean!")
        'pacific ocean'
        >>> normalize_text("Washington, D.C.")
        'washington d c'
        >>> normalize_text("Bogotá isn't 1,000 km away")
        'bogota isnt 1000 km away'
        >>> normalize_text("Newton's law at -18.0°C")
        'newton law at -18 c'
    """
    return " ".join(w for w in _words(text) if w not in ARTICLES)


def first_sentence(text: str | None) -> str:
    """The first sentence of the first non-empty line of ``text`` (``""`` for an empty reply).

    A sentence ends at ``.``, ``!`` or ``?`` followed by white space, except after a single capital
    letter (an initial: ``"D.C. is"``, ``"J. K. Rowling"``) or one of :data:`ABBREVIATIONS`.

        >>> first_sentence("The capital of France is Paris. It is also its largest city.")
        'The capital of France is Paris.'
        >>> first_sentence("\\n\\nWashington, D.C. is the capital.\\nMore text")
        'Washington, D.C. is the capital.'
    """
    if not text:
        return ""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    for m in _SENTENCE_END.finditer(line):
        head = line[:m.start()].rstrip("\"'\u2019\u201d)]")
        before = re.search(r"(\S+)[.!?]$", head)
        word = before.group(1).strip("\"'(") if before else ""
        if head.endswith(".") and (re.fullmatch(r"[A-Z]|(?:[A-Za-z]\.)+[A-Za-z]", word)
                                   or _fold(word) in ABBREVIATIONS):
            continue
        return line[:m.start()].strip()
    return line


def _occurrences(words: list[str], phrase: list[str]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(words) - n + 1) if words[i:i + n] == phrase]


def _negated(words: list[str], start: int) -> bool:
    for w in reversed(words[max(0, start - NEGATION_WINDOW):start]):  # nearest word first
        if w in CONTRASTS:
            return False
        if w in NEGATIONS:
            return True
    return False


def names_answer(sentence: str, accepted: Sequence[str]) -> bool:
    """Whether ``sentence`` names one of ``accepted`` as a whole run of words, not negated.

    Both sides go through :func:`normalize_text`; an occurrence is negated when a word of
    :data:`NEGATIONS` is among the :data:`NEGATION_WINDOW` words before it with no word of
    :data:`CONTRASTS` between them. Any one occurrence that is not negated is enough.
    """
    words = normalize_text(sentence).split()
    for answer in accepted:
        phrase = normalize_text(str(answer)).split()
        if phrase and any(not _negated(words, i) for i in _occurrences(words, phrase)):
            return True
    return False


def is_correct(reply: str | None, accepted: Sequence[str]) -> bool:
    """``names_answer(first_sentence(reply), accepted)``: the reader of a whole reply."""
    if isinstance(accepted, str):
        raise TypeError("accepted must be a list of accepted answers, e.g. ['Paris'], not a string")
    return names_answer(first_sentence(reply), accepted)


def reply_key(reply: str | None) -> str | None:
    """What a majority vote compares: the normalized first sentence (``None`` for an empty reply).

    Two replies that say the same thing in other words get different keys; a vote over keys is
    therefore a vote over phrasings, which favours the model's most likely wording.
    """
    key = normalize_text(first_sentence(reply))
    return key or None


FILLER = frozenset({"is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "by", "of", "in",
                    "on", "at", "to", "and", "called", "known", "as", "named", "has", "have", "for", "which",
                    "answer", "i", "think", "believe", "would", "say"})
"""Words an :func:`answer_key` drops besides the question's own words."""


_CLAUSE_END = re.compile(r"[,;:]\s|\s[-\u2013\u2014]\s|\s\(")


def answer_key(reply: str | None, question: str = "") -> str | None:
    """What a vote over free-form replies compares: the words of the first clause of the first
    sentence (cut at ``", "``, ``";"``, ``":"``, a dash or ``"("``) that are neither in ``question``
    nor in :data:`FILLER` (``None`` for an empty reply; the whole normalized clause when nothing else
    is left). Gold answers are not used, so correct and wrong replies are grouped by the same rule.

        >>> answer_key("The capital of France is Paris, a city of light.", "What is the capital of France?")
        'paris'
        >>> answer_key("Paris is the capital of France!", "What is the capital of France?")
        'paris'
        >>> answer_key("It is Lyon (I think).", "What is the capital of France?")
        'lyon'
    """
    clause = _CLAUSE_END.split(first_sentence(reply), maxsplit=1)[0]
    words = normalize_text(clause)
    if not words:
        return None
    asked = set(normalize_text(question).split())
    left = [w for w in words.split() if w not in asked and w not in FILLER]
    return " ".join(left) or words
