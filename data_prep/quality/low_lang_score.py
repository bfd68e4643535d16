"""Drop a document whose language-id probability is under `min_lang_score` (default: clean.min_lang_score).

Documents of a source with a declared language skip it (clean_steps.LANGUAGE_ID_CHECKS): their language
is the catalogue's, not the model's guess, and the model may have no label for it."""

from data_prep.quality.base import Params, Text, quality_check


@quality_check("low_lang_score", min_lang_score=0.5)
def keep(doc: Text, p: Params) -> bool:
    return doc.lang_score >= p.min_lang_score
