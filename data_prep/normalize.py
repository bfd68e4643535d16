"""Text normalisation: Unicode NFC, conservative mojibake repair, control characters, whitespace.

Each switch comes from `clean.normalize`. Source code keeps its indentation and inner spacing: only
trailing spaces and runs of blank lines are touched there. `counts` records how many documents each
step changed (reported in stats.json under `normalize`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import ftfy

from core.config import param


@dataclass(kw_only=True)
class NormalizeConfig:
    nfc: bool = param(True, help="Unicode NFC normalisation")
    fix_mojibake: bool = param(True, help="repair UTF-8 decoded as cp1252/latin-1 (ftfy, conservative)")
    strip_control: bool = param(True, help="remove control characters except tab and newline")
    whitespace: bool = param(True, help="collapse runs of spaces, trim lines, at most two blank lines")


# UTF-8 read as cp1252/latin-1 leaves a lead byte (Ã Â â Å Ð Ñ ...) followed by a continuation-range
# character; ftfy is slow, so it only sees documents that show this pattern.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00c5\u00ce\u00d0\u00d1\u00d8\u00d9\u00e0-\u00e3]"
                            "[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                            "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
# C0 and C1 controls except tab and newline, plus the BOM; zero-width joiners stay (emoji sequences).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_HSPACE_RUN = re.compile("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]{2,}|[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ODD_SPACE = re.compile("[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile("[ \t]+\n")
_LEADING = re.compile("\n[ \t]+")
_BLANK_RUN = re.compile("\n{4,}")


class Normalizer:
    def __init__(self, cfg: NormalizeConfig):
        self.cfg = cfg
        self.counts: Counter[str] = Counter()

    def __call__(self, text: str, code: bool = False) -> str:
        cfg = self.cfg
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if cfg.fix_mojibake and _MOJIBAKE_HINT.search(text):
            fixed = ftfy.fix_encoding(text)
            if fixed != text:
                self.counts["mojibake_fixed"] += 1
                text = fixed
        if cfg.nfc and not unicodedata.is_normalized("NFC", text):
            self.counts["nfc"] += 1
            text = unicodedata.normalize("NFC", text)
        if cfg.strip_control and _CONTROL.search(text):
            self.counts["control_removed"] += 1
            text = _CONTROL.sub("", text)
        if cfg.whitespace:
            text = self._whitespace(text, code)
        return text

    def _whitespace(self, text: str, code: bool) -> str:
        # Each substitution is guarded by a substring test (~20x cheaper than a scan by the regex
        # engine) that every match must contain; most documents need none of them.
        before = text
        if not code:
            if "  " in text or _ODD_SPACE.search(text):
                text = _HSPACE_RUN.sub(" ", text)
            if "\n " in text or "\n\t" in text:
                text = _LEADING.sub("\n", text)
        if " \n" in text or "\t\n" in text:
            text = _TRAILING.sub("\n", text)
        if not code:
            text = text.strip()
        else:
            text = text.strip("\n")
        if "\n\n\n\n" in text:
            text = _BLANK_RUN.sub("\n\n\n", text)
        if text != before:
            self.counts["whitespace"] += 1
        return text
