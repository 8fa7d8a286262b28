"""Redact PII: replace personal data and secrets with typed placeholders before anything is stored.

Run on a text or on a whole log record::

    >>> redact("mail jane.doe@example.com or call +1-555-201-7788")
    ('mail <EMAIL> or call <PHONE>', {'email': 1, 'phone': 1})

Kinds, their placeholders and how each is recognised (a candidate found by a regex is replaced
only if its validator accepts it, so random digit runs, dates, times and prices stay as they are):

============  =============  ===============================================================
kind          placeholder    recognised by
============  =============  ===============================================================
``email``     ``<EMAIL>``    local@domain.tld
``phone``     ``<PHONE>``    ``+`` and 8-15 digits (international), or US ``(555) 201-7788``,
                             ``555-201-7788``, ``555.201.7788``, ``1-555-201-7788``
``card``      ``<CARD>``     13-19 digits, optionally grouped by spaces/dashes, starting 2-6,
                             passing the Luhn check
``ssn``       ``<SSN>``      ``###-##-####`` outside the never-issued ranges (area 000, 666,
                             9xx; group 00; serial 0000)
``iban``      ``<IBAN>``     country code, check digits, 11-30 alphanumerics (spaced or not),
                             passing the ISO 7064 mod-97 check
``ip``        ``<IP>``       IPv4 dotted quads (each part 0-255) and IPv6 addresses
                             (validated with :mod:`ipaddress`)
``secret``    ``<SECRET>``   ``sk-`` API keys, AWS key ids ``AKIA``/``ASIA``, GitHub tokens
                             ``ghp_``/``gho_``/.../``github_pat_``, JWTs, ``Bearer <token>``
                             (the word ``Bearer`` is kept), and high-entropy hex/base64 runs of
                             32+ characters
============  =============  ===============================================================

Deliberate choices:

* A four-part dotted number whose parts are all 0-255 (``1.2.3.4``) is redacted as an IP, even
  when it is a version number: it cannot be told apart from an address, and over-redacting a
  version in a router query costs nothing while leaking an address is a PII leak. Three-part
  versions (``1.2.3``) and dotted quads with a part above 255 are left alone.
* US numbers need separators (or parentheses); a bare 10-digit run is not taken for a phone
  number, since order and account numbers look the same.
* Names and postal addresses are not detected: that needs a NER model (see below).

Why plain regexes and not Microsoft Presidio: ``presidio-analyzer`` (2.2.366) has a hard
dependency on spaCy (plus thinc, preshed, tldextract) and its default NLP engine loads the
``en_core_web_lg`` model, which cannot be downloaded on these offline machines. It can be run with
its ``no_op`` engine and pattern recognizers only, but then it brings nothing beyond the same
regexes and checksums written here, runs every recognizer as a separate pass with context scoring
per match (far from the 20,000 short queries/s this stage targets), and adds ~100 MB of
dependencies. Here one compiled alternation scans each text once, and validators (Luhn, mod-97,
SSN ranges, :mod:`ipaddress`, entropy) run only on candidates.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections import Counter
from typing import Any

#: Kind -> placeholder written in its place.
PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>", "phone": "<PHONE>", "card": "<CARD>", "ssn": "<SSN>",
    "iban": "<IBAN>", "ip": "<IP>", "secret": "<SECRET>",
}

#: Fields whose string values are identifiers or metadata, never redacted (at any depth).
KEEP_FIELDS: frozenset[str] = frozenset(
    {"id", "timestamp", "workload_id", "client_id", "model", "schema_version", "kind"})

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"

# One branch per kind; a text is scanned once with the alternation of the branches its characters
# make possible (most queries have no digit, '@' or ':' and skip the scan). Order matters where two
# kinds could start at the same place: secrets and e-mails first (their text contains digit runs),
# IBAN before long base64 runs and cards, SSN before phone. A candidate its validator rejects is
# kept as it is and its span is not searched again.
_BRANCHES: tuple[tuple[str, str], ...] = (
    ("@", r"""(?P<email>(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*
        @[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?
        (?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b)"""),
    ("key", r"""(?P<secret>(?<![\w-])(?:
          sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}
        | (?:AKIA|ASIA)[0-9A-Z]{16}
        | gh[pousr]_[A-Za-z0-9]{36,}
        | github_pat_[A-Za-z0-9_]{22,}
        | eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}
        )(?![\w-]))"""),
    ("bearer", r"(?P<bearer>\b[Bb]earer[ \t]+)(?P<token>[A-Za-z0-9._~+/-]{16,}=*)"),
    ("digit", r"(?P<iban>\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b)"),
    ("blob", r"(?P<blob>(?<![\w+/=-])[A-Za-z0-9+/_-]{32,}={0,2}(?![\w+/=-]))"),
    ("digit", r"(?P<ssn>(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-]))"),
    ("digit", r"(?P<card>(?<![\d-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d-]))"),
    ("digit", rf"(?P<ipv4>(?<![\d.]){_IPV4}(?!\.?\d))"),
    (":", rf"""(?P<ipv6>(?<![\w:.])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_IPV4}|[0-9A-Fa-f]{{1,4}})?
        (?:%[A-Za-z0-9]+)?(?![\w]|:[\w:]|\.\d))"""),
    ("digit", r"""(?P<phone>(?<![\w+])\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){1,5}(?![\d-])
        | (?<![\w-])(?:1[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[.-])\d{3}[.-]\d{4}(?![\d-]))"""),
)
_DIGIT = re.compile(r"\d")
_KEY = re.compile(r"sk-|AKIA|ASIA|gh[pousr]_|github_pat_|eyJ")
_BLOB = re.compile(r"[A-Za-z0-9+/_-]{32}")


def _triggers(text: str) -> frozenset[str]:
    """Which branches ``text`` can match at all (cheap substring tests)."""
    found = set()
    if "@" in text:
        found.add("@")
    if ":" in text:
        found.add(":")
    if _DIGIT.search(text):
        found.add("digit")
    if "earer" in text:
        found.add("bearer")
    if _KEY.search(text):
        found.add("key")
    if _BLOB.search(text):
        found.add("blob")
    return frozenset(found)


@functools.cache
def _pattern(triggers: frozenset[str]) -> re.Pattern[str]:
    return re.compile("|".join(branch for need, branch in _BRANCHES if need in triggers),
                      re.VERBOSE)


_SEPARATORS = re.compile(r"[ -]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def luhn_valid(number: str) -> bool:
    """Whether ``number`` (spaces and dashes allowed) is 13-19 digits passing the Luhn check."""
    digits = _SEPARATORS.sub("", number)
    return digits.isdigit() and 13 <= len(digits) <= 19 and _luhn(digits)


def iban_valid(candidate: str) -> bool:
    """Whether ``candidate`` (spaces allowed) is 15-34 characters passing ISO 7064 mod-97."""
    iban = candidate.replace(" ", "")
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _high_entropy(blob: str) -> bool:
    """A hex or base64 run that looks random: a hex digest, or mixed case and digits."""
    body = blob.rstrip("=")
    has_digit = any(c.isdigit() for c in body)
    if all(c in "0123456789abcdefABCDEF" for c in body):
        return has_digit and _entropy(body) >= 3.0
    has_upper = any(c.isupper() for c in body)
    has_lower = any(c.islower() for c in body)
    return has_digit and has_upper and has_lower and _entropy(body) >= 4.0


def _valid_ipv6(candidate: str) -> bool:
    if candidate.count(":") < 2 or not any(c.isalnum() for c in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _longest_valid_prefix(text: str, check: Any) -> int:
    """Length of the longest prefix of ``text`` ending before a space/dash that passes ``check``
    (0 if none): a card or IBAN followed by an unrelated number group still gets caught."""
    cut = len(text)
    while cut > 0:
        if check(text[:cut]):
            return cut
        cut = max(text.rfind(" ", 0, cut), text.rfind("-", 0, cut))
    return 0


def redact(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with every PII value replaced by its placeholder, and the count per kind.

    Args:
        text: any text (a query, a comment, a tool-call's JSON arguments, a raw log line).

    Returns:
        The redacted text (``text`` itself when nothing was found) and ``{kind: count}`` with only
        the kinds found.
    """
    triggers = _triggers(text)
    if not triggers or triggers == {":"} and text.count(":") < 2:
        return text, {}
    counts: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        kind = match.lastgroup
        value = match.group(kind)
        tail = ""
        if kind == "token":
            if not (any(c.isdigit() for c in value) or len(value) >= 24):
                return match.group(0)
            counts["secret"] = counts.get("secret", 0) + 1
            return match.group("bearer") + PLACEHOLDERS["secret"]
        if kind == "blob":
            if not _high_entropy(value):
                return value
            kind = "secret"
        elif kind in ("card", "iban"):
            check = luhn_valid if kind == "card" else iban_valid
            keep = _longest_valid_prefix(value, check)
            if not keep:
                return value
            value, tail = value[:keep], value[keep:]
        elif kind == "ipv4":
            kind = "ip"
        elif kind == "ipv6":
            if value.endswith(":") and not value.endswith("::"):  # "addr: ..." - not its colon
                value, tail = value[:-1], ":"
            if not _valid_ipv6(value):
                return match.group(0)
            kind = "ip"
        elif kind == "phone":
            digits = sum(c.isdigit() for c in value)
            if not (8 <= digits <= 15 if value.startswith("+") else 10 <= digits <= 11):
                return value
        counts[kind] = counts.get(kind, 0) + 1
        return PLACEHOLDERS[kind] + tail

    redacted = _pattern(triggers).sub(replace, text)
    return (redacted if counts else text), counts


def _add(total: dict[str, int], counts: dict[str, int]) -> None:
    for kind, n in counts.items():
        total[kind] = total.get(kind, 0) + n


def redact_record(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """A copy of a JSON-like record with every string value redacted, and the count per kind.

    Keys are never changed, nor the values of :data:`KEEP_FIELDS` (ids, timestamps, model, ...)
    at any depth; numbers, booleans and nulls are kept as they are. Strings inside lists and
    nested objects (request messages, response content, tool-call arguments, feedback comment)
    are redacted.
    """
    total: dict[str, int] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            text, counts = redact(value)
            if counts:
                _add(total, counts)
            return text
        if isinstance(value, dict):
            return {k: (v if k in KEEP_FIELDS and isinstance(v, str) else walk(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(record), total
