"""Benchmark of :mod:`tasks.redact` on CLINC150 queries with planted PII (not a test).

Run it::

    .venv/bin/python tests/benchmarks/bench_redact.py

It plants, deterministically (seeded), one or two PII values of different kinds into CLINC150
queries through varied templates, with generators that produce *valid* values (Luhn cards, mod-97
IBANs, issuable SSNs), then measures:

* recall per kind and overall: a planted value counts as found when it no longer appears in the
  output and its kind's placeholder does;
* precision: placeholders matching planted values / all placeholders written;
* the share of the clean CLINC150 queries (all splits) left byte for byte unchanged;
* speed: queries/s over the clean queries and over the planted ones, median of 3 repetitions, and
  the ratio to two bare passes over the same texts (``str.lower`` and one trivial regex).
"""

from __future__ import annotations

import ipaddress
import random
import re
import statistics
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.clinc150 import examples  # noqa: E402
from tasks.redact import PLACEHOLDERS, redact  # noqa: E402

SEED = 20261126
PLANTED_TEXTS = 1600  # each with one or two values: ~2,400 planted values


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


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": gen_email, "phone": gen_phone, "card": gen_card, "ssn": gen_ssn,
    "iban": gen_iban, "ip": gen_ip, "secret": gen_secret,
}
LABELS = {"email": "email", "phone": "number", "card": "card", "ssn": "ssn", "iban": "iban",
          "ip": "ip", "secret": "key"}
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
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    correct = placeholders = 0
    misses = []
    for text, planted in corpus:
        out, counts = redact(text)
        placeholders += sum(counts.values())
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


def timed(function: Callable[[str], object], texts: list[str], repeat: int = 3) -> float:
    """Median seconds of ``repeat`` passes of ``function`` over ``texts``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for text in texts:
            function(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    queries = [example.query for example in examples()]
    corpus = planted_corpus(queries)
    result = score(corpus)
    found, total = result["found"], result["total"]

    print(f"PII redaction benchmark: {len(queries)} clean CLINC150 queries, {len(corpus)} planted "
          f"texts with {sum(total.values())} planted values (seed {SEED})\n")
    print(f"{'kind':<8} {'planted':>8} {'found':>7} {'recall':>8}")
    for kind in sorted(total):
        print(f"{kind:<8} {total[kind]:>8} {found[kind]:>7} {found[kind] / total[kind]:>8.2%}")
    recall = sum(found.values()) / sum(total.values())
    print(f"{'overall':<8} {sum(total.values()):>8} {sum(found.values()):>7} {recall:>8.2%}")
    precision = result["correct"] / max(result["placeholders"], 1)
    print(f"\nprecision on planted texts: {precision:.2%} "
          f"({result['correct']} of {result['placeholders']} placeholders match planted values)")

    changed = [(q, redact(q)) for q in queries]
    changed = [(q, out) for q, (out, counts) in changed if out != q]
    unchanged = 1 - len(changed) / len(queries)
    print(f"clean queries unchanged: {unchanged:.2%} ({len(changed)} of {len(queries)} changed)")
    for q, out in changed[:10]:
        print(f"   changed: {q!r} -> {out!r}")
    for kind, value, out in result["misses"][:10]:
        print(f"   missed {kind}: {value!r} in {out!r}")

    planted_texts = [text for text, _ in corpus]
    trivial = re.compile(r"\d")
    rows = []
    for name, texts in (("clean", queries), ("planted", planted_texts)):
        base_lower = timed(str.lower, texts)
        base_regex = timed(trivial.search, texts)
        seconds = timed(redact, texts)
        rows.append((name, len(texts), len(texts) / seconds, seconds / base_lower,
                     seconds / base_regex))
    print(f"\nspeed (one core, median of 3)\n{'corpus':<8} {'texts':>6} {'queries/s':>11} "
          f"{'x str.lower':>12} {'x re(digit)':>12}")
    for name, n, qps, r_lower, r_regex in rows:
        print(f"{name:<8} {n:>6} {qps:>11,.0f} {r_lower:>12.1f} {r_regex:>12.1f}")

    ok = recall >= 0.99 and unchanged >= 0.99 and rows[0][2] >= 20_000
    print(f"\ntargets (recall >= 99%, clean unchanged >= 99%, >= 20,000 clean queries/s): "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
