"""Benchmark of :mod:`tasks.ingest.redact` on CLINC150 queries with planted PII (not a test).

Run it::

    .venv/bin/python tests/benchmarks/bench_redact.py

It plants, deterministically (seeded), one or two PII values of different kinds into CLINC150
queries through varied templates, with generators that produce *valid* values (Luhn cards, mod-97
IBANs, issuable SSNs, employee ids), then measures:

* recall per kind and overall: a planted value counts as found when it no longer appears in the
  output and its kind's placeholder does;
* precision: placeholders matching planted values / all placeholders written;
* the share of the clean CLINC150 queries (all splits) left byte for byte unchanged;
* person names, on a corpus the redactor did not make: recall over the hand-written names of
  ``tests/data/person_names.txt`` planted into CLINC150 queries in five forms (capitalised full
  names, introduced names in both cases, a capitalised given name after a cue word, lower-case
  names with no introduction), and precision on the human-written CLINC150 queries of the
  ``val`` and ``test`` splits, whose every name redaction was judged by hand (person or not, in
  ``tests/data/person_names.txt``; the rules were tuned on ``train`` only);
* speed: queries/s over the clean queries (as they are, lower case, and sentence-cased) and over
  the planted ones, median of 3 repetitions, and the ratio to two bare passes over the same texts
  (``str.lower`` and one trivial regex).
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import re
import statistics
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.demo.clinc150 import examples  # noqa: E402
from tasks.ingest.redact import PLACEHOLDERS, redact  # noqa: E402

SEED = 20261126
PLANTED_TEXTS = 1600  # each with one or two values: ~2,400 planted values
NAMES_FILE = Path(__file__).resolve().parents[1] / "data" / "person_names.txt"
#: CLINC150 splits the name rules were tuned on, and those they are measured on
TUNED_ON, MEASURED_ON = ("train",), ("val", "test")


def _luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it pass Luhn."""
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, char in enumerate(reversed(digits)):
            d = int(char)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def gen_card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15),
                                 ("37", 15), ("6011", 16), ("4", 13), ("62", 19)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = _luhn_complete(body)
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain" or length not in (15, 16):
        return number
    sep = " " if style == "space" else "-"
    groups = ([number[:4], number[4:10], number[10:]] if length == 15
              else [number[i:i + 4] for i in range(0, 16, 4)])
    return sep.join(groups)


_IBAN_FORMATS = {"DE": "n18", "GB": "a4n14", "FR": "n23", "NL": "a4n10", "ES": "n20",
                 "IT": "a1n22", "CH": "n17", "BE": "n12"}


def gen_iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_IBAN_FORMATS))
    bban = ""
    for kind, count in re.findall(r"([an])(\d+)", _IBAN_FORMATS[country]):
        pool = string.ascii_uppercase if kind == "a" else string.digits
        bban += "".join(rng.choice(pool) for _ in range(int(count)))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.5:
        return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
    return iban


def gen_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def gen_email(rng: random.Random) -> str:
    first = rng.choice(["jane", "omar", "li", "maria", "k", "dev.ops", "j_smith", "anna-lee"])
    last = rng.choice(["doe", "khan", "wei", "garcia", "o", "team", "smith2", "x"])
    sep = rng.choice([".", "_", "", "+hr"])
    domain = rng.choice(["example.com", "corp.example.org", "mail.co.uk", "acme.io", "uni.edu"])
    return f"{first}{sep}{last}@{domain}"


def gen_phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    area = str(rng.randint(201, 989))
    return rng.choice([
        f"+1-555-{d(3)}-{d(4)}", f"+1 {area} {d(3)} {d(4)}", f"+44 20 {d(4)} {d(4)}",
        f"+49 30 {d(7)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", f"+91 {d(5)} {d(5)}",
        f"({area}) {d(3)}-{d(4)}", f"{area}-{d(3)}-{d(4)}", f"{area}.{d(3)}.{d(4)}",
        f"1-{area}-{d(3)}-{d(4)}", f"+61 2 {d(4)} {d(4)}",
    ])


def gen_ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    address = ipaddress.IPv6Address(rng.getrandbits(128) & ~(0xFFFF << 64))  # some zero groups
    return address.compressed if rng.random() < 0.7 else address.exploded


def gen_secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    b64url = alnum + "-_"
    s = lambda pool, n: "".join(rng.choice(pool) for _ in range(n))  # noqa: E731
    return rng.choice([
        "sk-" + s(alnum, 48), "sk-proj-" + s(b64url, 40), "AKIA" + s(string.ascii_uppercase
                                                                    + string.digits, 16),
        "ghp_" + s(alnum, 36), "eyJ" + s(b64url, 30) + ".eyJ" + s(b64url, 40) + "." + s(b64url, 43),
        "Bearer " + s(alnum + "._-", 32), s("0123456789abcdef", 40),
        s(alnum + "+/", 44) + "=",
    ])


def gen_employee_id(rng: random.Random) -> str:
    return f"E{rng.randrange(10**6):06d}"


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": gen_email, "phone": gen_phone, "card": gen_card, "ssn": gen_ssn,
    "iban": gen_iban, "ip": gen_ip, "secret": gen_secret, "employee_id": gen_employee_id,
}
LABELS = {"email": "email", "phone": "number", "card": "card", "ssn": "ssn", "iban": "iban",
          "ip": "ip", "secret": "key", "employee_id": "employee id"}
TEMPLATES = ["{q} - my {label} is {v}", "{q}, reach me at {v}", "{v}: {q}", "{q} (ref {v})",
             "{q}. {v}", "{q} using {v} please", "{label} {v} - {q}", "{q}\n{label}: {v}."]


def planted_corpus(queries: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """``(text, [(kind, value), ...])``: one or two values of different kinds per query."""
    rng = random.Random(SEED)
    kinds = sorted(GENERATORS)
    corpus = []
    for _ in range(PLANTED_TEXTS):
        text = rng.choice(queries)
        planted = []
        for kind in rng.sample(kinds, rng.choice([1, 2])):
            value = GENERATORS[kind](rng)
            text = rng.choice(TEMPLATES).format(q=text, label=LABELS[kind], v=value)
            planted.append((kind, value))
        corpus.append((text, planted))
    return corpus


def _secret_part(kind: str, value: str) -> str:
    return value.removeprefix("Bearer ") if kind == "secret" else value


def score(corpus: list[tuple[str, list[tuple[str, str]]]]) -> dict[str, object]:
    """Recall and precision of the planted values (names the CLINC150 queries hold themselves are
    measured apart, by :func:`name_precision`, and not counted here)."""
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    correct = placeholders = 0
    misses = []
    for text, planted in corpus:
        out, counts = redact(text)
        placeholders += sum(n for kind, n in counts.items() if kind != "name")
        hits: Counter[str] = Counter()
        for kind, value in planted:
            total[kind] += 1
            if _secret_part(kind, value) not in out and PLACEHOLDERS[kind] in out:
                found[kind] += 1
                hits[kind] += 1
            else:
                misses.append((kind, value, out))
        correct += sum(min(n, counts.get(kind, 0)) for kind, n in hits.items())
    return {"found": found, "total": total, "correct": correct, "placeholders": placeholders,
            "misses": misses}

# --- person names ---------------------------------------------------------------------------

#: How a name is planted: form -> (claimed: the redactor is meant to catch it, templates). Fields:
#: {q} a CLINC150 query, {Full} "Given Surname", {First}, {Last}, and lower-case {first}, {last}.
NAME_FORMS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "capitalised full name": (True, (
        "{q}, {Full}", "{Full} here: {q}", "{q} - {Full}", "{q} for {Full}",
        "please {q} and cc {Full}")),
    "introduced, capitalised": (True, (
        "my name is {First} and {q}", "{q}. Call me {First}", "{q}, I'm called {First}",
        "{q} - Dr. {Last}", "Mrs {Full}: {q}")),
    "introduced, lower case": (False, (
        "my name is {first} {last} and {q}", "{q}, call me {first}", "{q}, my name is {first}")),
    "capitalised given name after a cue": (False, (
        "{q}, thanks {First}", "ask {First}: {q}", "{q} and tell {First}", "{q} with {First}")),
    "lower case, no introduction": (False, (
        "{q} for {first} {last}", "{first} {last}: {q}", "{q}, {first}")),
}


def _sections() -> dict[str, list[str]]:
    """The ``[section]``s of :data:`NAMES_FILE`: their lines, comments and blanks left out."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in NAMES_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line.strip() and not line.startswith("#") and current is not None:
            current.append(line)
    return sections


def person_names() -> list[tuple[str, str, str]]:
    """``(group, given, surname)`` of the hand-written names."""
    names, group = [], ""
    for line in _sections()["names"]:
        if line.startswith("=="):
            group = line.strip("= ")
            continue
        given, surname = line.split(" ", 1)
        names.append((group, given, surname))
    return names


def planted_names(queries: list[str]) -> list[tuple[str, str, str, str, str, list[str]]]:
    """``(form, group, name, query, text, words)``: every name planted once per form into a
    CLINC150 query; ``words`` are the name's words the text holds (all must go)."""
    rng = random.Random(SEED + 1)
    corpus = []
    for form, (_, templates) in NAME_FORMS.items():
        for group, given, surname in person_names():
            template = rng.choice(templates)
            values = {"Full": f"{given} {surname}", "First": given, "Last": surname,
                      "first": given.lower(), "last": surname.lower()}
            query = rng.choice(queries)
            text = template.format(q=query, **values)
            used = [v for k, v in values.items() if "{" + k + "}" in template]
            words = sorted({w for v in used for w in v.split()})
            corpus.append((form, group, f"{given} {surname}", query, text, words))
    return corpus


def _holds(text: str, word: str) -> int:
    return len(re.findall(rf"(?<![\w'-]){re.escape(word)}(?![\w'-])", text, re.IGNORECASE))


def name_recall(queries: list[str]) -> dict[str, object]:
    """Per form and per group: planted names found (none of their words left, ``<NAME>``
    written), and the names missed."""
    found: Counter[tuple[str, str]] = Counter()
    total: Counter[tuple[str, str]] = Counter()
    misses = []
    for form, group, name, query, text, words in planted_names(queries):
        out, _ = redact(text)
        kept = [w for w in words if _holds(out, w) > _holds(query, w)]  # the query's own may stay
        total[form, group] += 1
        if not kept and PLACEHOLDERS["name"] in out:
            found[form, group] += 1
        else:
            misses.append((form, name, out))
    return {"found": found, "total": total, "misses": misses}


def judged_spans() -> dict[tuple[str, str], bool]:
    """``(query, redacted words) -> is a person's name``, as judged by hand for every name the
    redactor found in the CLINC150 splits :data:`MEASURED_ON`."""
    judged = {}
    for line in _sections()["clinc150 judged"]:
        mark, words, query = line.split("\t")
        judged[query, words] = mark == "+"
    return judged


def name_spans(queries: list[str]) -> list[tuple[str, str]]:
    """``(query, redacted words)`` for every name the redactor finds in ``queries``."""
    spans = []
    for query in queries:
        out, counts = redact(query)
        if not counts.get("name"):
            continue
        pattern = re.escape(out).replace(re.escape(PLACEHOLDERS["name"]), "(.+?)")
        match = re.fullmatch(pattern, query, re.DOTALL)
        assert match, (query, out)
        spans += [(query, words) for words in match.groups()]
    return spans


def name_precision(queries: list[str]) -> dict[str, object]:
    """Names found in ``queries`` (CLINC150 ``val`` + ``test``) against the hand judgement: a
    span no one judged counts as not a name."""
    judged = judged_spans()
    spans = name_spans(queries)
    persons = [s for s in spans if judged.get(s) is True]
    wrong = [s for s in spans if judged.get(s) is False]
    unjudged = [s for s in spans if s not in judged]
    wrong_queries = {q for q, _ in wrong + unjudged}
    return {"spans": spans, "persons": persons, "wrong": wrong, "unjudged": unjudged,
            "queries": len(queries), "wrong_queries": len(wrong_queries),
            "precision": len(persons) / max(len(spans), 1),
            "false_positive_rate": len(wrong_queries) / len(queries)}


def timed(function: Callable[[str], object], texts: list[str], repeat: int = 3) -> float:
    """Median seconds of ``repeat`` passes of ``function`` over ``texts``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for text in texts:
            function(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sentence_case(query: str) -> str:
    """``what is my balance`` -> ``What is my balance``, and ``i`` -> ``I``."""
    return re.sub(r"\bi\b", "I", query[:1].upper() + query[1:])


def print_names(queries: list[str], measured: list[str]) -> tuple[float, float, float]:
    """Prints the name results; returns (recall over the claimed forms, precision, false-positive
    rate on the measured CLINC150 splits)."""
    recall = name_recall(queries)
    found, total = recall["found"], recall["total"]
    groups = list(dict.fromkeys(group for _, group in total))
    print(f"\nperson names: {len(person_names())} hand-written names ({NAMES_FILE.name}), each "
          f"planted once per form into a CLINC150 query\n"
          f"{'form':<37} {'claimed':>7} {'planted':>8} {'found':>6} {'recall':>7}")
    for form, (claimed, _) in NAME_FORMS.items():
        f = sum(found[form, g] for g in groups)
        t = sum(total[form, g] for g in groups)
        print(f"{form:<37} {'yes' if claimed else 'no':>7} {t:>8} {f:>6} {f / t:>7.1%}")
    claimed_forms = [form for form, (claimed, _) in NAME_FORMS.items() if claimed]
    f = sum(found[form, g] for form in claimed_forms for g in groups)
    t = sum(total[form, g] for form in claimed_forms for g in groups)
    claimed_recall = f / t
    print(f"{'claimed forms together':<37} {'':>7} {t:>8} {f:>6} {claimed_recall:>7.1%}")
    print(f"\nrecall per group of names, claimed forms\n{'group':<37} {'found':>6} {'recall':>7}")
    for group in groups:
        f = sum(found[form, group] for form in claimed_forms)
        t = sum(total[form, group] for form in claimed_forms)
        print(f"{group.split(' (')[0]:<37} {f:>3}/{t:<3} {f / t:>7.1%}")
    for form, name, out in [m for m in recall["misses"] if m[0] in claimed_forms][:12]:
        print(f"   missed ({form}): {name!r} in {out!r}")

    result = name_precision(measured)
    print(f"\nname precision on CLINC150 {'+'.join(MEASURED_ON)} ({result['queries']} "
          f"human-written queries; rules tuned on {'+'.join(TUNED_ON)} only; every name found "
          f"judged by hand):\n"
          f"  names redacted {len(result['spans'])}: {len(result['persons'])} person names, "
          f"{len(result['wrong'])} not a person, {len(result['unjudged'])} not judged yet "
          f"(counted as wrong)\n"
          f"  precision {result['precision']:.1%}; queries with a wrongly redacted word "
          f"{result['wrong_queries']} ({result['false_positive_rate']:.2%})")
    for query, words in result["wrong"] + result["unjudged"]:
        mark = "not judged" if (query, words) in result["unjudged"] else "not a person"
        print(f"   {mark}: {words!r} in {query!r}")
    lower = set(result["spans"])
    cased = name_spans([sentence_case(q) for q in measured])
    extra = [(q, w) for q, w in cased if (q.lower(), w.lower()) not in lower]
    print(f"  the same queries sentence-cased: {len(cased)} names redacted, {len(extra)} more than "
          f"in lower case (not judged)")
    for query, words in extra:
        print(f"   more: {words!r} in {query!r}")
    return claimed_recall, result["precision"], result["false_positive_rate"]


def main() -> int:
    clinc = examples()
    queries = [example.query for example in clinc]
    measured = [example.query for example in clinc if example.split in MEASURED_ON]
    corpus = planted_corpus(queries)
    result = score(corpus)
    found, total = result["found"], result["total"]

    print(f"PII redaction benchmark: {len(queries)} clean CLINC150 queries, {len(corpus)} planted "
          f"texts with {sum(total.values())} planted values (seed {SEED})\n")
    print(f"{'kind':<11} {'planted':>8} {'found':>7} {'recall':>8}")
    for kind in sorted(total):
        print(f"{kind:<11} {total[kind]:>8} {found[kind]:>7} {found[kind] / total[kind]:>8.2%}")
    recall = sum(found.values()) / sum(total.values())
    print(f"{'overall':<11} {sum(total.values()):>8} {sum(found.values()):>7} {recall:>8.2%}")
    precision = result["correct"] / max(result["placeholders"], 1)
    print(f"\nprecision on planted texts: {precision:.2%} "
          f"({result['correct']} of {result['placeholders']} placeholders match planted values)")

    changed = []
    for q in queries:
        out, counts = redact(q)
        if set(counts) - {"name"}:
            changed.append((q, out))
    unchanged = 1 - len(changed) / len(queries)
    print(f"clean queries unchanged by kinds other than names: {unchanged:.2%} ({len(changed)} of "
          f"{len(queries)} changed; names are measured below)")
    for q, out in changed[:10]:
        print(f"   changed: {q!r} -> {out!r}")
    for kind, value, out in result["misses"][:10]:
        print(f"   missed {kind}: {value!r} in {out!r}")

    name_recall_claimed, name_prec, name_fpr = print_names(queries, measured)

    planted_texts = [text for text, _ in corpus]
    sentence = [sentence_case(q) for q in queries]
    trivial = re.compile(r"\d")
    rows = []
    for name, texts in (("clean", queries), ("sentence", sentence), ("planted", planted_texts)):
        base_lower = timed(str.lower, texts)
        base_regex = timed(trivial.search, texts)
        seconds = timed(redact, texts)
        with _names_off():
            seconds_no_names = timed(redact, texts)
        rows.append((name, len(texts), len(texts) / seconds, seconds / base_lower,
                     seconds / base_regex, seconds / seconds_no_names))
    print(f"\nspeed (one core, median of 3; 'sentence' = the clean queries sentence-cased)\n"
          f"{'corpus':<9} {'texts':>6} {'queries/s':>11} {'x str.lower':>12} {'x re(digit)':>12} "
          f"{'x no names':>11}")
    for name, n, qps, r_lower, r_regex, r_names in rows:
        print(f"{name:<9} {n:>6} {qps:>11,.0f} {r_lower:>12.1f} {r_regex:>12.1f} {r_names:>11.2f}")

    ok = (recall >= 0.99 and unchanged >= 0.99 and rows[0][2] >= 20_000
          and name_recall_claimed >= 0.9 and name_prec >= 0.85 and name_fpr <= 0.005)
    print(f"\ntargets (recall >= 99%, clean unchanged >= 99%, >= 20,000 clean queries/s; names: "
          f"recall >= 90% on the claimed forms, precision >= 85%, wrongly redacted queries "
          f"<= 0.5%): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


@contextlib.contextmanager
def _names_off() -> Iterator[None]:
    """Name detection switched off: the cost of the other kinds alone."""
    import tasks.ingest.redact as module

    original = module._redact_names
    module._redact_names = lambda text, counts: text
    try:
        yield
    finally:
        module._redact_names = original


if __name__ == "__main__":
    sys.exit(main())
