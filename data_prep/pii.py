"""PII redaction: emails, IP addresses, phone numbers and common API keys/secrets become tags.

Patterns are tuned for precision: an IPv4 needs four octets <= 255, a phone number needs a leading
`+`, parentheses or at least two separators between 9-15 digits, so years, prices and plain numbers
stay. Secrets are matched by their documented prefixes (AWS, GitHub, Slack, Stripe/OpenAI-style,
Google API keys, PEM private keys) and by `key = value` assignments whose name says secret.

Boundaries are look-arounds on ASCII word characters, not `\\b`: in a Unicode regex every CJK, Thai,
Arabic, Devanagari or Cyrillic letter is a word character, so `\\b` never holds between it and a Latin
letter or digit, and an address written against such text (no space, as Chinese, Japanese and Thai
are written) was left in place. Next to ASCII text the look-arounds behave as `\\b` did.
"""

from __future__ import annotations

import re
from collections import Counter

TAGS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE>", "secret": "<SECRET>"}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# `\b` on ASCII word characters: any other character (CJK, Thai, Arabic, Devanagari...) is a boundary.
_W = "A-Za-z0-9_"
_START = rf"(?<![{_W}])"  # before a pattern's first character, itself a word character
_END = rf"(?![{_W}])"  # after a pattern's last character, itself a word character
_EDGE = rf"(?:(?<=[{_W}])(?![{_W}])|(?<![{_W}])(?=[{_W}]))"  # `\b` after a class that also holds `-`
_SECRET_PATTERNS = [
    r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----[\s\S]+?-----END (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----",
    rf"{_START}(?:AKIA|ASIA)[0-9A-Z]{{16}}{_END}",  # AWS access key id
    rf"{_START}gh[pousr]_[A-Za-z0-9]{{36,}}{_END}",  # GitHub tokens
    rf"{_START}xox[abposr]-[A-Za-z0-9-]{{10,}}{_EDGE}",  # Slack tokens
    rf"{_START}(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{{16,}}{_END}",  # Stripe keys
    rf"{_START}sk-[A-Za-z0-9_-]{{20,}}{_EDGE}",  # OpenAI-style keys
    rf"{_START}AIza[0-9A-Za-z_-]{{35}}{_EDGE}",  # Google API keys
    # `aws_secret_access_key = ...`, `api_key: "..."`, `password=...`: redact the value only. (`\w*`
    # takes in the letters of any script glued to the name: the name is kept as it is.)
    r"(?i)(\b\w*(?:secret|token|passwd|password|api_key|apikey|access_key)\w*[\"']?\s{0,3}[:=]\s{0,3}[\"']?)"
    r"([A-Za-z0-9/+=_.-]{8,})",
]
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("secret", re.compile("|".join(f"(?:{p})" for p in _SECRET_PATTERNS[:-1]))),
    ("secret", re.compile(_SECRET_PATTERNS[-1])),
    ("email", re.compile(rf"(?<![{_W}.+-])[A-Za-z0-9._%+-]{{1,64}}@(?:[A-Za-z0-9-]{{1,63}}\.)+[A-Za-z]{{2,24}}{_END}")),
    ("ip", re.compile(rf"(?<![\d.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?![\d.]\d)")),
    ("ip", re.compile(rf"(?<![{_W}:])(?:[0-9A-Fa-f]{{1,4}}:){{7}}[0-9A-Fa-f]{{1,4}}(?![{_W}:])")),
    # +CC then groups; (area) then groups; or 3+ groups with separators. 9-15 digits overall. Digits
    # of any script (`\d`) stay part of the number, so they are not boundaries either.
    ("phone", re.compile(rf"(?<![{_W}\d+])(?:\+\d{{1,3}}[ .-]?(?:\(\d{{1,4}}\)[ .-]?)?\d{{1,4}}(?:[ .-]\d{{2,4}}){{1,5}}"
                         r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"
                         r"|\d{2,4}[.-]\d{2,4}[.-]\d{2,4}(?:[.-]\d{2,4}){0,2}"
                         rf"|0\d(?: \d{{2}}){{4}})(?![{_W}\d])")),
]


# Cheap tests run before each pattern: most documents hold no candidate, and the patterns'
# look-behinds make a full scan cost ~100 us per kB. Each test is true for every text the pattern
# can match; the hints start with a character class or a literal, which the regex engine skips to.
_SECRET_PREFIXES = ("_", "-----BEGIN", "AKIA", "ASIA", "xox", "sk-", "AIza")  # "_": gh?_, sk_, pk_, rk_
_SECRET_NAMES = ("secret", "token", "passw", "api_key", "apikey", "access_key")
_IPV4_HINT = re.compile(r"\.\d{1,3}\.\d")
_PHONE_HINT = re.compile(r"[+(\d](?:(?<=\d)[ .-]|(?<=[+(]))\d")


def _maybe(kind: str, index: int, text: str) -> bool:
    if kind == "secret":
        if index == 0:
            return any(p in text for p in _SECRET_PREFIXES)
        lowered = text.lower()
        return any(n in lowered for n in _SECRET_NAMES)
    if kind == "email":
        return "@" in text
    if kind == "ip":
        return bool(_IPV4_HINT.search(text)) if index == 3 else text.count(":") >= 7
    return bool(_PHONE_HINT.search(text))


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


class PiiRedactor:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        for index, (kind, pattern) in enumerate(PATTERNS):
            if not _maybe(kind, index, text):
                continue
            text = pattern.sub(lambda m, k=kind: self._replace(k, m), text)
        return text

    def _replace(self, kind: str, match: re.Match[str]) -> str:
        value = match.group(0)
        if kind == "phone":
            digits = _digits(value)
            dates = re.fullmatch(r"\d{4}[.-]\d{2}[.-]\d{2}|\d{2}[.-]\d{2}[.-]\d{4}", value)
            if not 9 <= digits <= 15 or dates:
                return value  # a date or a short number, not a phone
        self.counts[kind] += 1
        if match.re.groups == 2:  # `name = value`: keep the name
            return match.group(1) + TAGS[kind]
        return TAGS[kind]
