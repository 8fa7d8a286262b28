"""SME review: export/import round-trip, experts override the judge and the thumbs, a simulated
SME whose late answers count next cycle, the Airflow UI answer, judge calibration."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tasks.curate import CurateConfig, curate
from tasks.judge import JudgeConfig, attribute
from tasks.review import (
    SIMULATED_SOURCE,
    UI_ACCEPT,
    UI_LATER,
    ReviewConfig,
    ReviewError,
    ReviewStore,
    announce_calibration,
    apply_ui_response,
    calibration,
    export_queue,
    import_decisions,
    main,
    make_decision,
    review,
)
from tests.test_judge import seed_store


@pytest.fixture(scope="module")
def judged_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store judged once by knn-vote: wrong-1/wrong-2 flagged, odd/unrated-odd novel."""
    home = tmp_path_factory.mktemp("judged")
    seed_store(home)
    attribute(JudgeConfig(home=str(home), k=5, audit_fraction=0.0, min_similarity=0.3))
    return home


@pytest.fixture
def home(judged_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(judged_home, copy)
    return copy


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_export_import_round_trip(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ReviewStore(str(home), "router")
    out = home / "to-review.csv"
    assert main(["export", "--home", str(home), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert {r["record_id"]: r["reason"] for r in rows} == {
        "wrong-1": "judge_flagged", "wrong-2": "judge_flagged", "odd": "novel",
        "unrated-odd": "novel"}
    flagged = next(r for r in rows if r["record_id"] == "wrong-1")
    assert flagged["route"] == "banking" and flagged["judge_expert"] == "travel"
    assert all(r["label"] == "" for r in rows)

    answers = {"wrong-1": "travel", "wrong-2": "banking", "odd": "discard"}  # one left blank
    for row in rows:
        row["label"] = answers.get(row["record_id"], "")
    row_notes = {"wrong-1": "clearly a trip"}
    for row in rows:
        row["note"] = row_notes.get(row["record_id"], "")
    write_csv(out, rows)
    assert main(["import", str(out), "--home", str(home), "--reviewer", "alice"]) == 0
    decided = store.decisions()
    assert {r: d["label"] for r, d in decided.items()} == answers
    assert decided["wrong-1"]["reviewer"] == "alice" and decided["wrong-1"]["source"] == "sme"
    assert decided["wrong-1"]["note"] == "clearly a trip"
    assert [p["record_id"] for p in store.pending()] == ["unrated-odd"]

    again = home / "rest.jsonl"
    assert export_queue(store, again) == 1
    everything = home / "all.jsonl"
    assert export_queue(store, everything, include_decided=True) == 4
    labels = {json.loads(line)["record_id"]: json.loads(line)["label"]
              for line in everything.read_text().splitlines()}
    assert labels["wrong-2"] == "banking" and labels["unrated-odd"] == ""
    line = json.loads(again.read_text())
    again.write_text(json.dumps({**line, "label": "meta"}) + "\n")
    assert import_decisions(store, again, "bob", ["meta", "travel"]) == 1
    assert store.pending() == []
    capsys.readouterr()

    bad = home / "bad.csv"
    write_csv(bad, [
        {"record_id": "nope", "label": "travel"},
        {"record_id": "wrong-1", "label": "astrology"},
        {"record_id": "wrong-2", "label": "travel"},
        {"record_id": "wrong-2", "label": "home"},
        {"record_id": "odd", "label": ""},
    ])
    before = len(store.read("decisions"))
    with pytest.raises(ReviewError, match="nothing imported, 3 problem") as failure:
        import_decisions(store, bad, "carol", ["travel", "home", "banking"])
    message = str(failure.value)
    assert "row 2: record 'nope' is not in the review queue" in message
    assert "row 3: label 'astrology'" in message and "labelled both" in message
    assert len(store.read("decisions")) == before  # all or nothing
    assert main(["import", str(bad), "--home", str(home), "--reviewer", "carol"]) == 1
    assert "nothing imported" in capsys.readouterr().err
    with pytest.raises(ReviewError, match="needs the columns"):
        (home / "cols.csv").write_text("id,expert\nx,y\n")
        import_decisions(store, home / "cols.csv", "carol", ["travel"])
    with pytest.raises(ReviewError, match=r"\.csv or \.jsonl"):
        export_queue(store, home / "out.xlsx")


def test_experts_override_the_judge_and_the_thumbs(home: Path) -> None:
    store = ReviewStore(str(home), "router")
    assert store.judgements()["wrong-1"]["expert"] == "travel"  # the judge's proposal
    store.append("decisions", [
        make_decision("wrong-1", "banking", "alice", "sme"),  # no: the route was right
        make_decision("wrong-2", "banking", "alice", "sme"),  # yes: a routing error
        make_decision("d20-home-0", "discard", "alice", "sme"),  # a thumbs-up, overruled
        make_decision("d20-work-1", "utility", "alice", "sme"),  # a thumbs-up, relabelled
    ])
    result = curate(CurateConfig(home=str(home), min_examples=5))
    rows = [json.loads(line) for path in (result.train_path, result.test_path)
            for line in Path(path).read_text().splitlines()]
    label = {r["id"]: r["expert"] for r in rows}
    assert label["wrong-1"] == "banking" and label["wrong-2"] == "banking"
    assert label["d20-work-1"] == "utility"
    assert "d20-home-0" not in label and "odd" not in label and "right-1" not in label
    funnel = result.funnel
    assert funnel["negative"] == 4 and funnel["judged"] == 4 and funnel["judge_flagged"] == 2
    assert funnel["sme_reviewed"] == 4 and funnel["sme_confirmed"] == 1
    assert funnel["sme_confirmed_of_flagged"] == 1 and funnel["sme_pending"] == 2
    assert funnel["labelled_sme"] == 3
    assert funnel["judge_calibration_n"] == 2 and funnel["judge_agreement"] == 0.5
    assert funnel["judge_precision"] == 0.5
    manifest = json.loads((Path(result.dataset_dir) / "manifest.json").read_text())
    lineage = manifest["lineage"]
    assert lineage["judges"] == ["knn-vote(k=5)"]
    assert lineage["sme_decisions"]["wrong-1"]["reviewer"] == "alice"
    assert "d20-home-0" not in lineage["sme_decisions"]  # not in the version
    assert lineage["label_sources"]["sme"] == 3


def test_simulated_sme_answers_late_items_next_cycle(home: Path) -> None:
    with pytest.raises(ReviewError, match="gold labels"):
        review(ReviewConfig(home=str(home), mode="simulated"))
    truth = home / "simulator" / "truth-router.parquet"
    truth.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ["wrong-1", "wrong-2", "odd", "unrated-odd"],
                  "gold_expert": ["travel", "banking", "out_of_scope", "out_of_scope"]}
                 ).to_parquet(truth)
    first = review(ReviewConfig(home=str(home), mode="simulated", sme_capacity=2))
    assert first.decided == 2 and first.pending == 2 and first.source == SIMULATED_SOURCE
    store = ReviewStore(str(home), "router")
    decided = store.decisions()
    assert {d["source"] for d in decided.values()} == {SIMULATED_SOURCE}
    assert all("simulation" in d["reviewer"] for d in decided.values())
    assert first.calibration["n"] == 2 and first.calibration["agreement"] == 1.0
    assert first.calibration["precision"] == 1.0 and first.calibration["kappa"] is None

    second = review(ReviewConfig(home=str(home), mode="simulated", sme_capacity=2))
    assert second.decided == 2 and second.pending == 0 and second.decided_total == 4
    assert store.decisions()["odd"]["label"] == "out_of_scope"
    skipped = review(ReviewConfig(home=str(home), mode="skip"))
    assert skipped.decided == 0 and len(store.read("calibration")) == 3


def test_ui_answer_and_calibration_alarm(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ReviewStore(str(home), "router")
    shown = ["wrong-1", "wrong-2", "odd", "unrated-odd"]
    experts = ["travel", "banking", "home", "out_of_scope"]
    assert apply_ui_response(store, None, shown, experts) == []
    assert apply_ui_response(store, {"chosen_options": [UI_LATER]}, shown, experts) == []
    with pytest.raises(ReviewError, match="line 1"):
        apply_ui_response(store, {"chosen_options": [UI_ACCEPT],
                                  "params_input": {"labels": "wrong-1 astrology"}}, shown,
                          experts)
    with pytest.raises(ReviewError, match="not in the review queue"):
        apply_ui_response(store, {"chosen_options": [UI_ACCEPT],
                                  "params_input": {"labels": "d20-home-0 home"}}, shown, experts)
    response = {"chosen_options": [UI_ACCEPT], "responded_by_user": {"name": "dana"},
                "params_input": {"labels": "wrong-2 travel  # not banking\n"
                                           "odd out_of_scope"}}
    result = review(ReviewConfig(home=str(home), mode="ui", ui_response=response,
                                 ui_items=shown, experts=experts))
    decided = store.decisions()
    assert {r: d["label"] for r, d in decided.items()} == {
        "wrong-1": "travel", "wrong-2": "travel", "odd": "out_of_scope"}
    assert decided["wrong-1"]["reviewer"] == "dana" and result.source == "airflow-ui"

    cal = calibration(store, min_agreement=0.9, min_items=1)
    assert cal["n"] == 2 and cal["agreement"] == 1.0  # both were routing errors
    assert cal["label_accuracy"] == 0.5 and not cal["alarm"]
    store.append("decisions", [make_decision("wrong-1", "banking", "erin", "sme")])
    cal = calibration(store, min_agreement=0.9, min_items=1)
    assert cal["agreement"] == 0.5 and cal["alarm"]
    announce_calibration(cal)
    assert "JUDGE CALIBRATION ALARM" in capsys.readouterr().err
