"""Language identification with py3langid, whose naive-Bayes model ships inside the package (offline).

Scores are probabilities (py3langid's length-calibrated softmax). Only the first `max_chars`
characters are classified: the cost is linear in the text and a prefix of a few hundred words is
enough for a document-level decision.
"""

from __future__ import annotations

import functools

from py3langid.langid import MODEL_FILE
from py3langid.langid import LanguageIdentifier as _PyLangId


@functools.lru_cache(maxsize=1)
def _model() -> _PyLangId:
    # Loading the model takes ~0.5 s; one copy per process.
    return _PyLangId.from_model_file(MODEL_FILE, norm_probs=True)


def supported_languages() -> list[str]:
    return list(_model().labels)


class LanguageIdentifier:
    def __init__(self, max_chars: int = 500):
        self.max_chars = max_chars
        self.model = _model()

    def __call__(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code, probability) of the text's language."""
        sample = text[: self.max_chars]
        if not sample.strip():
            return "und", 0.0
        lang, score = self.model.classify(sample)
        return lang, round(float(score), 4)
