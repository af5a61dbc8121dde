"""Text metrics for generated answers, from the metric libraries themselves
(sacrebleu, rouge-score): `evaluate.load(...)` would fetch metric code from
the Hub at run time, which fails offline.

Per sample: sentence BLEU, chrF, ROUGE-1/2/L F1, exact match, contains-answer.
For the whole set: corpus BLEU and chrF (not the mean of sentence scores),
mean ROUGE, and the rates of exact matches and contained answers.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# the metrics a generation evaluation reports, in table order; higher is better for all
GENERATION_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match", "contains")


def normalize(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces: how answers are compared
    for exact match and contains ("Forty-two." matches "forty two")."""
    text = text.lower().translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return " ".join(text.split())


def exact_match(output: str, reference: str) -> float:
    return float(normalize(output) == normalize(reference))


def contains(output: str, reference: str) -> float:
    """1 when the (normalised) reference appears in the (normalised) output."""
    ref = normalize(reference)
    return float(bool(ref) and re.search(rf"(^|\s){re.escape(ref)}($|\s)", normalize(output)) is not None)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def sample_scores(output: str, reference: str) -> dict[str, float]:
    """Every metric for one answer against its reference (BLEU and chrF 0-100,
    the rest 0-1)."""
    import sacrebleu

    rouge = _rouge().score(reference, output)
    return {
        "bleu": sacrebleu.sentence_bleu(output, [reference]).score,
        "chrf": sacrebleu.sentence_chrf(output, [reference]).score,
        **{name: rouge[name].fmeasure for name in ROUGE_TYPES},
        "exact_match": exact_match(output, reference),
        "contains": contains(output, reference),
    }


def corpus_scores(outputs: list[str], references: list[str], per_sample: list[dict[str, float]]) -> dict[str, Any]:
    """The set's scores: corpus BLEU/chrF over all answers, means of the rest."""
    import sacrebleu

    if not outputs:
        return {}
    n = len(per_sample)
    result: dict[str, Any] = {
        "bleu": sacrebleu.corpus_bleu(outputs, [references]).score,
        "chrf": sacrebleu.corpus_chrf(outputs, [references]).score,
    }
    for name in (*ROUGE_TYPES, "exact_match", "contains"):
        result[name] = sum(s[name] for s in per_sample) / n
    return result
