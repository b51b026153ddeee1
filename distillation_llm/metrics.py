"""ROUGE-L and exact match as scored by Natural Instructions (Wang et al., 2022,
`compute_metrics.py`) and reused by MiniLLM, DistiLLM and ABKD (`rouge_metric.py`): ROUGE-L
F-measure with `rouge_score`'s tokenizer and Porter stemmer, exact match after SQuAD answer
normalisation *without* its removal of articles, each taken as the best over an example's
references."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, remove punctuation, collapse whitespace. This is SQuAD v1.1's `normalize_answer`
    as Natural Instructions and the DistiLLM/ABKD `rouge_metric.py` adapt it: articles are kept,
    so "the cat" does not match "cat"."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] (longest common subsequence of stemmed, lower-cased words)."""
    return _SCORER.score(target=reference, prediction=prediction)["rougeL"].fmeasure


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both strings are equal after `normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def max_over_references(fn: Callable[[str, str], float], prediction: str, references: Sequence[str]) -> float:
    """The best score of `prediction` against any of `references` (at least one)."""
    if not references:
        raise ValueError("an example needs at least one reference to be scored")
    return max(fn(prediction, reference) for reference in references)


def score_predictions(predictions: Sequence[str], references_lists: Sequence[Sequence[str]]) -> dict:
    """Corpus scores on a 0-100 scale: {"rougeL", "exact_match", "n"}, each the mean over examples
    of the best score over that example's references."""
    if len(predictions) != len(references_lists):
        raise ValueError(f"{len(predictions)} predictions but {len(references_lists)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    n = len(predictions)
    rouge = sum(max_over_references(rouge_l, p, refs) for p, refs in zip(predictions, references_lists))
    exact = sum(max_over_references(exact_match, p, refs) for p, refs in zip(predictions, references_lists))
    return {"rougeL": 100.0 * rouge / n, "exact_match": 100.0 * exact / n, "n": n}
