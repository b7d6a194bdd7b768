"""MMBench: the chosen option read from the answer without any API, and circular accuracy.

MMBench's dev set holds each question several times with its options rotated; copies share
``index % 1_000_000`` (the copy of question ``i`` has index ``i + k * 1_000_000``). Circular
evaluation counts a question right only if every copy present is answered right.

Two readings (docs/semantics.md §9). The headline is lmms-eval's without an API
(`lmms_choice`, its ``mmbench_en_dev_static``): its rule matcher (a lone letter token, a
letter token in one of its wrappers, else exactly one option's text inside the answer), then
its ranked letter extraction where the matcher finds nothing; the GPT judge of
``mmbench_en_dev`` is not called. The careful reading is `extract_choice` (reroute's); an
answer it cannot read is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from reroute.eval.metrics.intervals import proportion
from reroute.eval.task import Metric

CIRCULAR_MODULUS = 1_000_000
LETTERS = "ABCDE"

_BARE = re.compile(r"^\(?([A-E])\)?[.:,)]?$")
_LEADING = re.compile(r"^(?:\(([A-E])\)|([A-E])[.):,])(?:\s|$)")
_ANSWER_IS = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*[:：]?\s*\(?([A-E])\b\)?", re.IGNORECASE)


# ----------------------------------------------------------------------------- lmms-eval's reading

#: letters lmms-eval's matcher accepts as a token (it allows E though it reads options A-D only)
_TOKEN_LETTERS = "ABCDE"
#: (before, after) wrappers of a letter token lmms-eval's matcher tries, in its order
_TOKEN_WRAPPERS = (
    ("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
    (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."),
)
#: answer phrases after which lmms-eval's extraction looks for a letter (its English ones)
_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is",
)
#: lmms-eval's ranking of where a letter was found (higher wins; then the later position)
_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
         "space": 2, "fallback": 0}


def lmms_options(row: Mapping[str, object]) -> dict[str, str]:
    """The options lmms-eval's MMBench reader knows: columns A-D whose cell is not missing (None or NaN);
    a cell holding the text "nan" is kept, as lmms-eval keeps it."""
    options = {}
    for letter in "ABCD":
        value = row.get(letter)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        options[letter] = str(value)
    return options


def _letter_token(answer: str) -> str | None:
    """lmms-eval's letter matcher: one letter standing alone as a word (unless "A" is one of more than
    three words: it may be the article), else one letter in a single wrapper such as "B." or "(B)"."""
    words = answer.split()
    alone = [c for c in _TOKEN_LETTERS if c in words]
    if len(alone) == 1 and not ("A" in words and len(words) > 3):
        return alone[0]
    for before, after in _TOKEN_WRAPPERS:
        wrapped = [c for c in _TOKEN_LETTERS if before + c + after in words]
        if len(wrapped) == 1:
            return wrapped[0]
    return None


def _option_text(answer: str, options: Mapping[str, str]) -> str | None:
    """lmms-eval's text matcher: the one option whose lower-cased text lies in the lower-cased answer."""
    lowered = answer.lower()
    inside = [k for k, v in options.items() if str(v).lower() in lowered]
    return inside[0] if len(inside) == 1 else None


def _ranked_letter(answer: str, letters: Sequence[str]) -> str | None:
    """lmms-eval's ranked extraction: every place a letter appears in a known form, the best-ranked form
    winning and, within it, the last position."""
    text = answer.strip()
    for char in ",.!?;:'\"":  # one character at a time, in this order
        text = text.strip(char)
    if not text.strip():
        return None
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter)
    for form, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                          ("space", "{} ")):
        for c in letters:
            if pattern.format(c) in text:
                found.append((_RANK[form], text.rfind(pattern.format(c)), c))
    lowered = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at != -1:
            for c in letters:
                position = text.find(c, at + len(phrase))
                if position != -1:
                    found.append((_RANK["phrase"], position, c))
    stripped = text.strip()
    for c in letters:
        if stripped.startswith(c) and (len(stripped) == 1 or not stripped[1].isalpha()):
            found.append((_RANK["start"], 0, c))
        if stripped.endswith(c) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            found.append((_RANK["end"], len(text) - 1, c))
    if not found:
        found = [(_RANK["fallback"], text.rfind(c), c) for c in letters if c in text]
    if not found:
        return None
    return max(found, key=lambda item: (item[0], item[1]))[2]


def lmms_choice(answer: str, options: Mapping[str, str]) -> str | None:
    """The option letter lmms-eval's API-free MMBench scoring reads from ``answer`` (stripped first, as its
    ``process_results`` does), or None; ``options`` as `lmms_options` gives them."""
    text = (answer or "").strip()
    # lmms-eval's marker of a failed judge call: its letter matcher gives up on it, its text matcher does not
    letter = None if "Failed to obtain answer via API" in text else _letter_token(text)
    return letter or _option_text(text, options) or _ranked_letter(text, sorted(options))


# ----------------------------------------------------------------------------- the careful reading


def circular_group(index: int) -> int:
    """The question a (possibly rotated) MMBench row belongs to."""
    return int(index) % CIRCULAR_MODULUS


def extract_choice(answer: str, options: Mapping[str, str]) -> str | None:
    """The option letter an answer picks, or None.

    In order: a bare letter (``"B"``, ``"(B)"``, ``"B."``); a letter opening the answer
    (``"B. a cat"``, ``"B) ..."``, ``"(B) ..."``); ``"Answer: B"`` / ``"The answer is B"``; the
    text of exactly one option (the whole answer, or contained in it). Letters must name one
    of ``options``.
    """
    text = (answer or "").strip()
    valid = {k for k, v in options.items() if v is not None and str(v).strip() not in ("", "nan")}
    for pattern in (_BARE, _LEADING, _ANSWER_IS):
        match = pattern.match(text)
        if match:
            letter = next(g for g in match.groups() if g)
            return letter if letter in valid else None
    lowered = " ".join(text.lower().rstrip(".").split())
    exact = [k for k in sorted(valid) if " ".join(str(options[k]).lower().split()) == lowered]
    if len(exact) == 1:
        return exact[0]
    contained = [k for k in sorted(valid) if " ".join(str(options[k]).lower().split()) in lowered]
    return contained[0] if len(contained) == 1 else None


def mmbench_metrics(indices: Sequence[int], correct: Sequence[bool], categories: Sequence[str]) -> dict[str, Metric]:
    """``circular_accuracy`` over question groups, per category ``<c>/circular_accuracy``, and ``accuracy`` per row.

    ``categories`` gives each row's category; a group's category is that of its lowest index
    (the unrotated question when present).
    """
    if not len(indices) == len(correct) == len(categories):
        raise ValueError("indices, correct and categories must have the same length")
    groups: dict[int, list[tuple[int, bool, str]]] = {}
    for index, ok, category in zip(indices, correct, categories):
        groups.setdefault(circular_group(index), []).append((int(index), bool(ok), category))
    hits = {g: all(ok for _, ok, _ in rows) for g, rows in groups.items()}
    group_category = {g: min(rows)[2] for g, rows in groups.items()}
    metrics = {
        "circular_accuracy": proportion(list(hits.values())),
        "accuracy": proportion(list(correct)),
    }
    for category in sorted(set(group_category.values())):
        metrics[f"{category}/circular_accuracy"] = proportion([hits[g] for g in hits if group_category[g] == category])
    return metrics
