"""Drop a document whose sqrt(#distinct) most frequent character `char_rep_n`-grams take over
`max_char_rep` of all occurrences (BigScience's character repetition ratio)."""

from data_prep.filters import char_repetition_ratio
from data_prep.quality.base import Params, Text, quality_check


@quality_check("char_repetition", char_rep_n=10, max_char_rep=0.2)
def keep(doc: Text, p: Params) -> bool:
    return char_repetition_ratio(doc.text, int(p.char_rep_n)) <= p.max_char_rep
