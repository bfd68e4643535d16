"""Drop a document of more than `max_words` words (characters for zh/ja)."""

from data_prep.quality.base import Params, Text, quality_check


@quality_check("too_many_words", max_words=100_000)
def keep(doc: Text, p: Params) -> bool:
    return doc.n_words <= p.max_words
