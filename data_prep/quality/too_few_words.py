"""Drop a document of fewer than `min_words` words (characters for zh/ja), counted after boilerplate removal."""

from data_prep.quality.base import Params, Text, quality_check


@quality_check("too_few_words", min_words=20)
def keep(doc: Text, p: Params) -> bool:
    return doc.n_words >= p.min_words
