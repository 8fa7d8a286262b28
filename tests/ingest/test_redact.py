"""PII redaction: each kind found and replaced, look-alikes left alone, records and ingestion,
and the measured recall and precision of person names (floors under the benchmark's figures)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.records import make_request, make_response
from tasks.demo.clinc150 import examples
from tasks.demo.simulate import SimulateConfig, simulate
from tasks.ingest.landing import IngestConfig, ingest
from tasks.ingest.redact import ID_PATTERNS_ENV, iban_valid, luhn_valid, redact, redact_record
from tests.benchmarks.bench_redact import (
    MEASURED_ON,
    NAME_FORMS,
    name_precision,
    name_recall,
    sentence_case,
)


@pytest.mark.parametrize(("text", "expected", "kind"), [
    ("reply to jane.doe@example.com please", "reply to <EMAIL> please", "email"),
    ("mail A_B+tag@mail.co.uk.", "mail <EMAIL>.", "email"),
    ("call me at +1-555-201-7788)", "call me at <PHONE>)", "phone"),
    ("ring +44 20 7946 0958 today", "ring <PHONE> today", "phone"),
    ("office (555) 201-7788", "office <PHONE>", "phone"),
    ("cell 555.201.7788 or 1-555-201-7789", "cell <PHONE> or <PHONE>", "phone"),
    ("card 4111 1111 1111 1111 expired", "card <CARD> expired", "card"),
    ("amex 3782-822463-10005", "amex <CARD>", "card"),
    ("pay with 5555555555554444", "pay with <CARD>", "card"),
    ("my ssn is 123-45-6789", "my ssn is <SSN>", "ssn"),
    ("iban DE89 3704 0044 0532 0130 00 thanks", "iban <IBAN> thanks", "iban"),
    ("to GB82WEST12345698765432", "to <IBAN>", "iban"),
    ("host 192.168.10.254 is down", "host <IP> is down", "ip"),
    ("ping 2001:db8::8a2e:370:7334 and ::1", "ping <IP> and <IP>", "ip"),
    ("ip: fe80::1%eth0. and 94d7:fe89:cdcb:0:6d35:cb24:bb16:4794: up",
     "ip: <IP>. and <IP>: up", "ip"),
    ("key sk-proj-abcdEFGH1234ijklMNOP5678", "key <SECRET>", "secret"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws <SECRET>", "secret"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token <SECRET>", "secret"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9Pl",
     "jwt <SECRET>", "secret"),
    ("Authorization: Bearer abc123def456ghi789jkl", "Authorization: Bearer <SECRET>", "secret"),
    ("hash d41d8cd98f00b204e9800998ecf8427e", "hash <SECRET>", "secret"),
    ("blob aGVsbG8gd29ybGQhIFRoaXMgaXMgYSB0ZXN0IQ==", "blob <SECRET>", "secret"),
    ("badge E123456 expired", "badge <EMPLOYEE_ID> expired", "employee_id"),
    ("my employee number is 48213", "my employee number is <EMPLOYEE_ID>", "employee_id"),
    ("Staff ID: AB-4471, please", "Staff ID: <EMPLOYEE_ID>, please", "employee_id"),
    ("employee #E-99812 left", "employee #<EMPLOYEE_ID> left", "employee_id"),
    ("reply to Jane Doe today", "reply to <NAME> today", "name"),
    ("Xochitl Garcia asked", "<NAME> asked", "name"),
    ("my name is Ngozi, hi", "my name is <NAME>, hi", "name"),
    ("call me mary", "call me <NAME>", "name"),
    ("send $20 to steve's account", "send $20 to <NAME>'s account", "name"),
    ("Dr. Okonkwo says hi", "Dr. <NAME> says hi", "name"),
    ("ask Ludwig van Beethoven", "ask <NAME>", "name"),
    ("Jean-Luc Picard and Grace Lee", "<NAME> and <NAME>", "name"),
    ("from Lucía Fernández", "from <NAME>", "name"),
])
def test_each_kind_is_replaced(text: str, expected: str, kind: str) -> None:
    redacted, counts = redact(text)
    assert redacted == expected
    assert set(counts) == {kind}


@pytest.mark.parametrize("text", [
    "how much is $1,250.00 in euros",
    "wake me up at 10:30 on 2026-11-20",
    "set a timer for 10:30:00",
    "meet at 10:30: bring the slides",
    "mac 00:1A:2B:3C:4D:5E is not an address here",
    "transfer 2,500 dollars from account 1234",
    "order number 1234567890123456 has not arrived",   # 16 digits, fails Luhn
    "card 4111 1111 1111 1112",                          # Luhn-invalid
    "ref DE89370400440532013001",                         # mod-97-invalid IBAN-like string
    "ids 000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000",  # invalid SSN ranges
    "upgrade to version 1.2.3 or 300.1.1.1",             # not a valid IPv4
    "order E1234567 and e123456 and xE123456",            # not the id format, not introduced
    "employee number 7 won the raffle",                   # too short for an id
    "what is 12 * 3 + 4",
    "call 555-1234",                                      # 7 digits: too short for a phone
    "use std::vector in c++",
    "supercalifragilisticexpialidociousandthensome words",  # long but not random
    "",
    # given names that are also words, months, places or brands: kept without more evidence
    "will it rain in paris", "Will it rain in Paris?", "flights to paris from jordan",
    "pay my bill with chase", "Mark my calendar for april", "may i know my balance",
    "is summer hot in austin", "Ask Alexa to play music", "Virginia Beach hotels",
    "how far is San Jose from Santa Cruz", "New York to Los Angeles", "grace period for my loan",
    "rose gold iphone", "John F. Kennedy airport", "Sydney Opera House tickets",
    "a LoRA adapter on the tiny base", "p95 latency 5000.0 ms > max 1000.0 ms", "I miss Paris",
])
def test_look_alikes_are_kept(text: str) -> None:
    assert redact(text) == (text, {})


def test_deployment_adds_id_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "patient MRN-0042317 and badge P998877 for E123456"
    assert redact(text) == ("patient MRN-0042317 and badge P998877 for <EMPLOYEE_ID>",
                            {"employee_id": 1})
    # one regex per line; blank lines are skipped; a group named "id" is all that is replaced
    monkeypatch.setenv(ID_PATTERNS_ENV, "\n".join([r"\bMRN-\d{7}\b", "",
                                                   r"(?i:badge)\s+(?P<id>P\d{6})\b"]))
    assert redact(text) == ("patient <EMPLOYEE_ID> and badge <EMPLOYEE_ID> for <EMPLOYEE_ID>",
                            {"employee_id": 3})
    monkeypatch.setenv(ID_PATTERNS_ENV, r"MRN-(\d")
    with pytest.raises(ValueError, match=ID_PATTERNS_ENV):
        redact(text)


@pytest.mark.parametrize(("text", "expected"), [
    # lower case: a clear given name (US list, not a word or place) on its own, or introduced
    ("tell john i'm late", "tell <NAME> i'm late"),
    ("my name is will", "my name is will"),          # "will" is in no given-name list
    ("call me april", "call me <NAME>"),            # introduced: a month name is a name here
    ("text folake", "text folake"),                 # not in the lists, not introduced
    # capitalised: a known given name, or a known surname after a capitalised word
    ("thanks Hunter", "thanks <NAME>"),             # a word-name after a cue word
    ("Hunter Thompson wrote it", "<NAME> wrote it"),   # a word-name with a surname
    ("Paris Hilton is in Paris", "<NAME> is in Paris"),
    ("Mr Miyagi", "Mr <NAME>"),
    ("JOHN SMITH", "<NAME>"),                       # all capitals: as lower case
    ("levi stadium and Ben Franklin Bridge", "levi stadium and Ben Franklin Bridge"),
])
def test_name_rules(text: str, expected: str) -> None:
    assert redact(text)[0] == expected


def test_name_recall_on_hand_written_names() -> None:
    """Floors a few points under the benchmark's figures (97.8% on the claimed forms)."""
    queries = [example.query for example in examples()]
    result = name_recall(queries)
    found, total = result["found"], result["total"]
    claimed = [form for form, (is_claimed, _) in NAME_FORMS.items() if is_claimed]
    recall = (sum(n for (form, _), n in found.items() if form in claimed)
              / sum(n for (form, _), n in total.items() if form in claimed))
    assert recall >= 0.95, result["misses"][:10]
    hard = [group for _, group in total if group.startswith("Hard")][0]
    for form in claimed:
        form_recall = (sum(n for (f, _), n in found.items() if f == form)
                       / sum(n for (f, _), n in total.items() if f == form))
        assert form_recall >= 0.9, form
    assert found["capitalised full name", hard] >= 10  # "Grace Lee", "Paris Jackson", ...


def test_name_precision_on_clinc150() -> None:
    """Every name found in CLINC150 val+test was judged by hand; one not judged counts as wrong.
    Measured: 89.4% precision, 25 of 8,600 queries (0.29%) with a wrongly redacted word."""
    measured = [example.query for example in examples() if example.split in MEASURED_ON]
    result = name_precision(measured)
    assert result["precision"] >= 0.87, result["wrong"] + result["unjudged"]
    assert result["false_positive_rate"] <= 0.004, result["wrong"] + result["unjudged"]
    # words that are names but mostly something else stay, unless judged a person's name there
    traps = re.compile(r"\b(?:paris|jordan|will|bill|mark|may|april|june|chase|austin|alexa)\b")
    persons = {query for query, words in result["persons"] if traps.search(words)}
    for text in [*measured, *map(sentence_case, measured)]:
        out, _ = redact(text)
        if traps.findall(text.lower()) != traps.findall(out.lower()):
            assert text.lower() in persons, text


def test_dotted_quad_version_is_taken_for_an_ip() -> None:
    # Deliberate: 1.2.3.4 cannot be told apart from an address; over-redacting is the safe side.
    assert redact("running version 1.2.3.4") == ("running version <IP>", {"ip": 1})


def test_validators() -> None:
    assert luhn_valid("4111-1111-1111-1111") and not luhn_valid("4111-1111-1111-1112")
    assert not luhn_valid("4111")  # too short
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89370400440532013001")


def test_counts_and_trailing_number_group() -> None:
    text = "a@b.io, c@d.io, card 4111 1111 1111 1111 2026 and +1-555-201-7788"
    redacted, counts = redact(text)
    assert redacted == "<EMAIL>, <EMAIL>, card <CARD> 2026 and <PHONE>"
    assert counts == {"email": 2, "card": 1, "phone": 1}


def test_record_keeps_ids_and_keys() -> None:
    record = {
        "schema_version": 1, "id": "jane@example.com-1", "timestamp": "2026-11-20T10:30:00Z",
        "workload_id": "router", "client_id": "10.0.0.1", "model": "teacher-70b",
        "request": make_request("mail jane@example.com about 4111 1111 1111 1111"),
        "response": make_response("banking", "call-192.168.0.1"),
        "latency_ms": 1200.5, "feedback": {"rating": -1, "comment": "ssn 123-45-6789 leaked"},
    }
    record["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = (
        json.dumps({"expert": "banking", "note": "from 10.1.2.3"}))
    redacted, counts = redact_record(record)
    assert counts == {"email": 1, "card": 1, "ssn": 1, "ip": 1}
    for key in ("id", "timestamp", "workload_id", "client_id", "model", "schema_version",
                "latency_ms"):
        assert redacted[key] == record[key]
    call = redacted["response"]["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "call-192.168.0.1"  # ids are kept at any depth
    assert json.loads(call["function"]["arguments"]) == {"expert": "banking", "note": "from <IP>"}
    assert redacted["request"]["messages"][-1]["content"] == "mail <EMAIL> about <CARD>"
    assert redacted["feedback"] == {"rating": -1, "comment": "ssn <SSN> leaked"}
    assert record["feedback"]["comment"] == "ssn 123-45-6789 leaked"  # the input is not changed


def _record(i: int, query: str) -> dict:
    return {"schema_version": 1, "id": f"r{i}", "timestamp": "2026-11-20T09:00:00.000Z",
            "workload_id": "router", "client_id": "hr-portal", "model": "teacher-70b",
            "request": make_request(query), "response": make_response("banking", f"call-{i}"),
            "latency_ms": 1200.0}


def test_ingest_stores_no_pii(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir(parents=True)
    bad = _record(3, "my card is 4111 1111 1111 1111")
    bad["latency_ms"] = "slow"  # contract breach: quarantined with its raw text
    lines = [
        json.dumps(_record(1, "reply to jane.doe@example.com about card 4111 1111 1111 1111")),
        json.dumps(_record(2, "how do I reset my password")),
        json.dumps(bad),
        '{"id": "r4", "query": "call +1-555-201-7788 or jane.doe@example.com"',  # bad JSON
        json.dumps({"kind": "feedback", "id": "r2", "timestamp": "2026-11-20T10:00:00Z",
                    "rating": -1, "comment": "ask bob@example.com"}),
    ]
    (landing / "router-2026-11-20.jsonl").write_text("\n".join(lines) + "\n")
    result = ingest(IngestConfig(home=str(tmp_path), run_id="pii"))

    assert (result.records_parsed, result.feedback_events, result.quarantined) == (2, 1, 2)
    assert result.pii_redacted == {"card": 2, "email": 3, "phone": 1}
    staged = pd.read_parquet(Path(result.staging_dir) / "records.parquet")
    feedback = pd.read_parquet(Path(result.staging_dir) / "feedback.parquet")
    quarantined = pd.read_parquet(tmp_path / "quarantine" / "pii-ingest.parquet")
    stored = [*staged["query"], *staged["raw"], *feedback["comment"], *feedback["raw"],
              *quarantined["raw"]]
    for text in stored:
        assert "@example.com" not in text and "4111 1111" not in text and "555-201" not in text
    assert staged.loc[0, "query"] == "reply to <EMAIL> about card <CARD>"
    assert json.loads(staged.loc[0, "raw"])["id"] == "r1"  # re-serialised, still valid JSON
    assert staged.loc[1, "raw"] == lines[1]  # nothing found: the raw line is kept byte for byte
    assert list(staged["id"]) == ["r1", "r2"]


def test_ingest_redacts_simulated_pii(tmp_path: Path) -> None:
    sim = simulate(SimulateConfig(days=1, records_per_day=300, seed=5, pii_rate=0.5,
                                  home=tmp_path))
    assert sim.with_pii > 0
    result = ingest(IngestConfig(home=str(tmp_path), run_id="sim"))
    assert result.pii_redacted.get("email", 0) + result.pii_redacted.get("phone", 0) > 0
    assert result.pii_redacted.get("employee_id", 0) > 0 and result.pii_redacted.get("name", 0) > 0
    staged = pd.read_parquet(Path(result.staging_dir) / "records.parquet")
    texts = [*staged["query"], *staged["raw"]]
    quarantine = tmp_path / "quarantine" / "sim-ingest.parquet"
    if quarantine.exists():
        texts += list(pd.read_parquet(quarantine)["raw"])
    planted = re.compile(r"@example\.com|\+1-555-\d{3}-\d{4}|\bE\d{6}\b")
    assert not [t for t in texts if planted.search(t)]
    # "my employee id is E123456, Jane Doe": the name goes too (the simulator's given names and
    # surnames are all in the gazetteer, or beside one that is)
    signed = [q.split("my employee id is <EMPLOYEE_ID>, ")[1] for q in staged["query"]
              if "my employee id is <EMPLOYEE_ID>, " in q]
    assert signed and set(signed) == {"<NAME>"}
