"""Drop a document whose share of stopwords (characters covered by them for zh/ja) is under
`min_stopwords`; languages without an embedded stopword list pass."""

from data_prep.filters import list_ratio, stopwords
from data_prep.quality.base import Params, Text, quality_check


@quality_check("too_few_stopwords", min_stopwords=0.15)
def keep(doc: Text, p: Params) -> bool:
    listed = stopwords(doc.lang)
    return not listed or list_ratio(doc.words, doc.text, listed, doc.lang) >= p.min_stopwords
