"""Drop a document whose word `word_rep_n`-grams that occur more than once are over `max_word_rep` of all
(BigScience's word repetition ratio)."""

from data_prep.filters import word_repetition_ratio
from data_prep.quality.base import Params, Text, quality_check


@quality_check("word_repetition", word_rep_n=5, max_word_rep=0.3)
def keep(doc: Text, p: Params) -> bool:
    return word_repetition_ratio(doc.words, int(p.word_rep_n)) <= p.max_word_rep
