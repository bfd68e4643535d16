"""Drop a document whose share of punctuation, symbols and digits (emoji included) among its non-space
characters is over `max_special`."""

from data_prep.filters import special_ratio
from data_prep.quality.base import Params, Text, quality_check


@quality_check("special_characters", max_special=0.25)
def keep(doc: Text, p: Params) -> bool:
    return special_ratio(doc.text) <= p.max_special
