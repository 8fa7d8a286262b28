"""CLINC150, vendored under ``tasks/data/clinc150`` (CC BY 3.0, Larson et al., EMNLP 2019).

Its ten domains are the router's expert agents; its out-of-scope queries go to the fallback expert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from tasks.core.config import DATA_DIR

SPLITS = ("train", "val", "test")

#: The demo router's experts: CLINC150's ten domains, plus the fallback for out-of-scope queries
#: (its workload file, tasks/workloads/router.yaml, names the same).
DOMAIN_EXPERTS: tuple[str, ...] = (
    "banking",
    "credit_cards",
    "kitchen_and_dining",
    "home",
    "auto_and_commute",
    "travel",
    "utility",
    "work",
    "small_talk",
    "meta",
)
FALLBACK_EXPERT = "out_of_scope"
EXPERTS: tuple[str, ...] = (*DOMAIN_EXPERTS, FALLBACK_EXPERT)


@dataclass(frozen=True)
class Example:
    query: str
    intent: str
    expert: str
    split: str


@lru_cache(maxsize=1)
def intent_to_expert() -> dict[str, str]:
    """Map each of the 150 intents to its domain (expert); ``oos`` maps to the fallback."""
    domains = json.loads((DATA_DIR / "domains.json").read_text())
    mapping = {intent: domain for domain, intents in domains.items() for intent in intents}
    missing = set(domains) - set(DOMAIN_EXPERTS)
    if missing:
        raise ValueError(f"domains.json names domains that are not experts: {sorted(missing)}")
    mapping["oos"] = FALLBACK_EXPERT
    return mapping


@lru_cache(maxsize=1)
def examples() -> tuple[Example, ...]:
    """Every labelled query of CLINC150 (in-scope and out-of-scope, all splits)."""
    raw = json.loads((DATA_DIR / "data_full.json").read_text())
    experts = intent_to_expert()
    out = []
    for split in SPLITS:
        for key in (split, f"oos_{split}"):
            for query, intent in raw[key]:
                out.append(Example(query=query, intent=intent, expert=experts[intent], split=split))
    return tuple(out)


def wiki_sentences() -> list[str]:
    """The unlabelled Wikipedia sentences shipped with CLINC150."""
    text = (DATA_DIR / "all_wiki_sents.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
