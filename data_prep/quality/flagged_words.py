"""Drop a document whose share of flagged (adult, spam) words (characters covered by them for zh/ja) is
over `max_flagged`; languages without an embedded list pass."""

from data_prep.filters import flagged_words, list_ratio
from data_prep.quality.base import Params, Text, quality_check


@quality_check("flagged_words", max_flagged=0.03)
def keep(doc: Text, p: Params) -> bool:
    listed = flagged_words(doc.lang)
    return not listed or list_ratio(doc.words, doc.text, listed, doc.lang) <= p.max_flagged
