"""Curation: confirmed labels only, exact and semantic de-duplication, stratified split, frozen
test set, no leakage, versions with lineage, the funnel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.core.records import make_request, make_response
from tasks.curation.curate import CurateConfig, CurateResult, NotEnoughData, curate, main, normalise
from tasks.demo.clinc150 import examples
from tasks.ingest.landing import IngestConfig, ingest
from tasks.ingest.validate import ValidateConfig, validate

EXPERTS = ("banking", "travel", "home", "utility", "work")


def record(rid: str, query: str, expert: str, rating: int | None, day: int = 20,
           minute: int = 0, model: str = "teacher-70b") -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": rid, "timestamp": f"2026-11-{day:02d}T09:{minute % 60:02d}:00Z",
        "workload_id": "router", "client_id": "hr-portal", "model": model,
        "request": make_request(query), "response": make_response(expert, f"call-{rid}"),
        "latency_ms": 1500.0,
    }
    if rating is not None:
        rec["feedback"] = {"rating": rating, "source": "user"}
    return rec


def clinc_query(expert: str, k: int, variant: int) -> str:
    """A real CLINC150 query of the expert's k-th intent: distinct intents are never
    near-duplicates, so only the tests that mean to make near-duplicates do."""
    by_intent: dict[str, list[str]] = {}
    for example in examples():
        if example.expert == expert:
            by_intent.setdefault(example.intent, []).append(example.query)
    intent = sorted(by_intent)[k]
    return by_intent[intent][variant]


def positives(day: int, per_expert: int, experts: tuple[str, ...] = EXPERTS
              ) -> list[dict[str, Any]]:
    return [record(f"d{day}-{expert}-{k}", clinc_query(expert, k, day), expert, 1,
                   day=day, minute=k)
            for expert in experts for k in range(per_expert)]


def load(home: Path, run_id: str, items: list[dict[str, Any]]) -> None:
    landing = home / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    (landing / f"{run_id}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    ingest(IngestConfig(home=str(home), run_id=run_id))
    validate(ValidateConfig(home=str(home), run_id=run_id))


def read(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def ids(path: str) -> set[str]:
    return {row["id"] for row in read(path)}


def run(home: Path, **settings: Any) -> CurateResult:
    return curate(CurateConfig(home=str(home), min_examples=5, **settings))


def test_positive_labels_dedup_and_stratified_split(tmp_path: Path) -> None:
    items = positives(20, 10)
    items += [
        record("neg-1", "book me a flight to oslo", "banking", -1),
        record("neg-2", "what is my balance", "travel", -1),
        record("unrated", "turn on the lights", "home", None),
        record("dup-a", "How do I  RESET my password?", "work", 1, minute=1),
        record("dup-b", "how do i reset my password?", "work", 1, minute=2),
        record("vote-1", "is it cold outside", "utility", 1, minute=3),
        record("vote-2", "Is it cold outside", "home", 1, minute=4),
        record("vote-3", "is it cold  outside", "home", 1, minute=5),
        record("rare", "who are you", "meta", 1),
    ]
    load(tmp_path, "b1", items)
    result = run(tmp_path)

    funnel = result.funnel
    assert {k: funnel[k] for k in (
        "records_in_window", "with_feedback", "positive", "negative", "labelled",
        "labelled_feedback", "labelled_sme", "after_dedup", "label_conflicts", "test_retracted",
        "semantic_duplicates", "leakage_removed", "leakage_pairs", "judged", "sme_confirmed",
        "ground_truth")} == {
        "records_in_window": 59, "with_feedback": 58, "positive": 56, "negative": 2,
        "labelled": 56, "labelled_feedback": 56, "labelled_sme": 0, "after_dedup": 53,
        "label_conflicts": 1, "test_retracted": 0, "semantic_duplicates": 0,
        "leakage_removed": 0, "leakage_pairs": 0, "judged": 0, "sme_confirmed": 0,
        "ground_truth": 53}
    assert funnel["train"] == result.n_train and funnel["test"] == result.n_test
    assert funnel["judge_agreement"] is None  # nothing judged and reviewed yet
    train, test = read(result.train_path), read(result.test_path)
    assert len(train) + len(test) == 53
    everything = train + test
    assert not {"neg-1", "neg-2", "unrated"} & {row["id"] for row in everything}
    assert len({normalise(row["query"]) for row in everything}) == 53
    assert [r for r in everything if r["id"].startswith("dup")] == [
        {"id": "dup-a", "query": "How do I  RESET my password?", "expert": "work",
         "label_source": "feedback"}]
    votes = [r for r in everything if r["id"].startswith("vote")]
    assert [(r["id"], r["expert"]) for r in votes] == [("vote-1", "home")]  # majority label
    assert {"id": "rare", "query": "who are you", "expert": "meta",
            "label_source": "feedback"} in train
    assert result.funnel["teacher_eligible"] == 1 and result.funnel["teacher_labelled"] == 0
    # Stratified: each expert gives ~40% of its examples to the test set.
    for expert in EXPERTS:
        n_test = result.label_counts["test"][expert]
        assert abs(n_test - 0.4 * (n_test + result.label_counts["train"][expert])) <= 1, expert
    assert sum(result.label_counts["train"].values()) == result.n_train

    manifest = json.loads((Path(result.dataset_dir) / "manifest.json").read_text())
    assert manifest["version"] == result.version == "v" + result.digest[:12]
    assert manifest["counts"] == result.label_counts and manifest["funnel"] == result.funnel
    assert Path(result.dataset_dir).name == result.version

    again = run(tmp_path)
    assert again.version == result.version and not again.created
    assert again.model_dump(exclude={"created"}) == result.model_dump(exclude={"created"})
    assert json.loads((Path(result.dataset_dir) / "manifest.json").read_text()) == manifest


def test_test_set_stays_frozen_as_data_grows(tmp_path: Path) -> None:
    load(tmp_path, "b1", positives(20, 10))
    v1 = run(tmp_path)
    test1, train1 = ids(v1.test_path), ids(v1.train_path)
    frozen_query = next(r["query"] for r in read(v1.test_path))

    more = positives(21, 10)
    more.append(record("copy-of-test", frozen_query.upper(), "banking", 1, day=21))
    load(tmp_path, "b2", more)
    v2 = run(tmp_path)
    test2, train2 = ids(v2.test_path), ids(v2.train_path)

    assert v2.version != v1.version and Path(v1.dataset_dir, "test.jsonl").exists()
    assert test1 <= test2 and train1 <= train2  # nothing moves between splits
    assert not test2 & train2
    assert "copy-of-test" not in test2 | train2
    queries = lambda path: {normalise(r["query"]) for r in read(path)}  # noqa: E731
    assert not queries(v2.test_path) & queries(v2.train_path)
    assert run(tmp_path).version == v2.version  # same data, same version

    # A window over day 21 only: train holds day-21 data, the test set keeps every frozen item.
    window = run(tmp_path, start="2026-11-21T00:00:00Z")
    assert test1 <= ids(window.test_path)
    assert all(i.startswith("d21") for i in ids(window.train_path))
    latest = json.loads((tmp_path / "datasets" / "router" / "latest.json").read_text())
    assert latest["version"] == window.version


def test_a_test_item_rated_negative_later_leaves_the_test_set(tmp_path: Path) -> None:
    load(tmp_path, "b1", positives(20, 6))
    v1 = run(tmp_path)
    victim = sorted(ids(v1.test_path))[0]
    load(tmp_path, "b2", [{"kind": "feedback", "id": victim, "rating": -1,
                           "timestamp": "2026-11-22T00:00:00Z", "source": "sme"}])
    v2 = run(tmp_path)
    assert ids(v2.test_path) == ids(v1.test_path) - {victim}
    assert victim not in ids(v2.train_path)
    assert v2.funnel["test_retracted"] == 1


def test_too_few_examples_fails_clearly_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NotEnoughData, match="min_examples=5.*records_in_window"):
        run(tmp_path)
    assert not (tmp_path / "datasets" / "router" / "test_ids.json").exists()
    assert main(["--home", str(tmp_path)]) == 1
    assert "fewer than min_examples" in capsys.readouterr().err
    with pytest.raises(ValueError, match="end must be after start"):
        CurateConfig(start="2026-11-21", end="2026-11-20")


def test_test_set_frozen_across_three_versions(tmp_path: Path) -> None:
    versions = []
    for day in (20, 21, 22):
        load(tmp_path, f"b{day}", positives(day, 5))
        versions.append(run(tmp_path))
    tests = [ids(v.test_path) for v in versions]
    trains = [ids(v.train_path) for v in versions]
    assert len({v.version for v in versions}) == 3
    assert tests[0] < tests[1] < tests[2] and trains[0] < trains[1] < trains[2]
    assert all(not t & tr for t, tr in zip(tests, trains, strict=True))
    for earlier, later in zip(versions, versions[1:], strict=False):
        manifest = json.loads((Path(later.dataset_dir) / "manifest.json").read_text())
        assert manifest["lineage"]["parent_version"] == earlier.version
        assert all(Path(earlier.dataset_dir, name).exists() for name in ("train.jsonl",
                                                                         "test.jsonl"))
    assert versions[2].funnel["leakage_pairs"] == 0


def near_twin(query: str) -> str:
    """The closest of a few harmless rewordings (never the same normalised text)."""
    from tasks.core.embeddings import embed_queries

    variants = [query + "?", query + " please", "hey, " + query, query + " asap"]
    vectors = embed_queries([query, *variants])
    scores = vectors[1:] @ vectors[0]
    assert scores.max() >= 0.9
    return variants[int(scores.argmax())]


def test_no_near_duplicate_of_a_test_query_enters_train(tmp_path: Path) -> None:
    load(tmp_path, "b1", positives(20, 10))
    v1 = run(tmp_path, near_duplicate_threshold=0.9)
    test_row = sorted(read(v1.test_path), key=lambda r: r["id"])[0]
    train_row = sorted(read(v1.train_path), key=lambda r: r["id"])[0]
    leak, echo = near_twin(test_row["query"]), near_twin(train_row["query"])
    assert normalise(leak) != normalise(test_row["query"])  # not an exact duplicate

    load(tmp_path, "b2", positives(21, 2) + [
        record("leak", leak, test_row["expert"], 1, day=21, minute=50),
        record("echo", echo, train_row["expert"], 1, day=21, minute=51)])
    v2 = run(tmp_path, near_duplicate_threshold=0.9)
    everything = ids(v2.train_path) | ids(v2.test_path)
    assert "leak" not in everything and "echo" not in everything
    assert v2.funnel["leakage_removed"] == 1 and v2.funnel["semantic_duplicates"] >= 1
    assert v2.funnel["leakage_pairs"] == 0
    assert ids(v1.test_path) <= ids(v2.test_path)


def test_no_test_query_near_what_an_earlier_version_trained_on(tmp_path: Path) -> None:
    load(tmp_path, "b1", positives(20, 10))
    v1 = run(tmp_path, near_duplicate_threshold=0.9, end="2026-11-21")
    learnt = sorted(read(v1.train_path), key=lambda r: r["id"])[:12]
    echoes = [record(f"echo-{i}", near_twin(row["query"]), row["expert"], 1, day=21, minute=i)
              for i, row in enumerate(learnt)]
    load(tmp_path, "b2", positives(21, 4) + echoes)
    # a window that no longer holds the queries v1 trained on: its champion still learnt them
    v2 = run(tmp_path, near_duplicate_threshold=0.9, start="2026-11-21")
    echo_ids = {e["id"] for e in echoes}
    assert not echo_ids & ids(v2.test_path)
    assert echo_ids <= ids(v2.train_path)
    assert v2.funnel["near_earlier_train"] >= len(echoes)  # a paraphrase among the new may be too
    assert len(ids(v2.test_path) - ids(v1.test_path)) > 0  # fresh queries still reach test


def test_out_of_scope_balance_cap_and_printed_funnel(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = positives(20, 8, ("banking", "travel"))
    items += [record(f"oos-{k}", q, "out_of_scope", 1, minute=k) for k, q in enumerate(
        ["what is the capital of peru", "how tall is mount everest",
         "tell me about the french revolution", "who painted the mona lisa"])]
    load(tmp_path, "b1", items)
    dropped = run(tmp_path, out_of_scope="drop", max_per_expert=3)
    assert dropped.funnel["out_of_scope"] == 4
    assert "out_of_scope" not in dropped.label_counts["train"] | dropped.label_counts["test"]
    assert max(dropped.label_counts["train"].values()) <= 3
    assert dropped.funnel["balance_capped"] > 0

    assert main(["--home", str(tmp_path), "--min-examples", "5"]) == 0
    out = capsys.readouterr().out
    for step in ("records_in_window", "negative", "judge_flagged", "sme_confirmed",
                 "ground_truth", "train", "test", "judge_agreement", "novel"):
        assert f"  {step} " in out, step


def test_dataset_version_logged_as_mlflow_input(tmp_path: Path) -> None:
    from tasks.core import tracking
    from tasks.core.config import get_paths
    from tasks.curation.curate import log_dataset_input

    load(tmp_path, "b1", positives(20, 4))
    result = run(tmp_path)
    paths = get_paths(tmp_path)
    mlflow = tracking.configure(paths)
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_dataset_input(result.dataset_dir)
    with pytest.raises(FileNotFoundError, match="not a dataset version"):
        log_dataset_input(tmp_path)
    experiment = tracking.ensure_experiment("router", paths)
    with mlflow.start_run(experiment_id=experiment) as active:
        log_dataset_input(result.dataset_dir)
    inputs = mlflow.get_run(active.info.run_id).inputs.dataset_inputs
    names = {i.dataset.name for i in inputs}
    assert names == {f"router-{result.version}-train", f"router-{result.version}-test"}
    tags = {t.key: t.value for i in inputs for t in i.tags}
    assert tags["flywheel.dataset_version"] == result.version
    assert tags["mlflow.data.context"] == "training"


def teacher_traffic(day: int = 20) -> list[dict[str, Any]]:
    """Unrated teacher routes (intents 6-8 of each expert: never near the rated ones) and the
    records whose teacher route must not be used."""
    items = [record(f"t-{expert}-{k}", clinc_query(expert, k, 0), expert, None, day=day,
                    minute=30 + k) for expert in EXPERTS for k in range(6, 9)]
    items += [
        # a thumbs-down without an expert label, and one an expert corrected
        record("neg-plain", clinc_query("banking", 9, 0), "travel", -1, day=day),
        record("neg-fixed", clinc_query("home", 9, 0), "work", -1, day=day),
        # unrated, but an expert relabelled it / discarded it
        record("sme-fixed", clinc_query("utility", 9, 0), "banking", None, day=day),
        record("sme-discarded", clinc_query("work", 9, 0), "work", None, day=day),
        # the flywheel's own student served it
        record("student", clinc_query("travel", 9, 0), "travel", None, day=day,
               model="flywheel-router/v3"),
        # the same query as a thumbs-up example, routed differently: the thumbs-up wins
        record("t-copy", clinc_query("banking", 0, day).upper(), "home", None, day=day),
    ]
    return items


def test_teacher_labels_join_train_only_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.curation.review import ReviewStore, make_decision

    load(tmp_path, "b1", positives(20, 6) + teacher_traffic())
    ReviewStore(str(tmp_path), "router").append("decisions", [
        make_decision("neg-fixed", "home", "alice", "sme"),
        make_decision("sme-fixed", "utility", "alice", "sme"),
        make_decision("sme-discarded", "discard", "alice", "sme")])
    teacher_ids = {f"t-{expert}-{k}" for expert in EXPERTS for k in range(6, 9)}

    off = run(tmp_path)
    assert not (ids(off.train_path) | ids(off.test_path)) & (teacher_ids | {"t-copy"})
    assert off.funnel["teacher_eligible"] == len(teacher_ids) + 1  # + t-copy
    assert off.funnel["teacher_labelled"] == 0

    on = run(tmp_path, teacher_labels="train")
    train, test = read(on.train_path), read(on.test_path)
    by_id = {row["id"]: row for row in train + test}
    assert {r["id"] for r in train if r["label_source"] == "teacher"} == teacher_ids
    assert all(by_id[r]["expert"] == r.split("-")[1] for r in teacher_ids)
    assert {r["label_source"] for r in test} <= {"feedback", "sme"}  # never the teacher's
    assert ids(off.test_path) == ids(on.test_path)  # the test set does not move
    assert "neg-plain" not in by_id  # a thumbs-down's teacher route is never a label
    assert by_id["neg-fixed"]["expert"] == "home" and by_id["neg-fixed"]["label_source"] == "sme"
    assert by_id["sme-fixed"]["expert"] == "utility"  # the expert wins over the teacher
    assert by_id["sme-fixed"]["label_source"] == "sme"
    assert "sme-discarded" not in by_id and "student" not in by_id
    assert "t-copy" not in by_id  # its query's thumbs-up label wins
    assert by_id["d20-banking-0"]["expert"] == "banking"

    funnel = on.funnel
    assert funnel["teacher_labelled"] == len(teacher_ids)
    assert funnel["train"] == funnel["train_sme"] + funnel["train_feedback"] \
        + funnel["teacher_labelled"] == on.n_train
    lineage = json.loads((Path(on.dataset_dir) / "manifest.json").read_text())["lineage"]
    assert lineage["teacher_labels"] == "train"
    assert lineage["label_sources_by_split"]["train"]["teacher"] == len(teacher_ids)
    assert "teacher" not in lineage["label_sources_by_split"]["test"]
    assert sum(lineage["label_sources"].values()) == on.n_train + on.n_test
    assert sum(lineage["label_sources_by_split"]["train"].values()) == on.n_train

    capped = run(tmp_path, teacher_labels="train", max_teacher_labelled=4)
    assert capped.funnel["teacher_labelled"] == 4
    assert capped.funnel["teacher_capped"] == len(teacher_ids) - 4
    assert ids(capped.test_path) == ids(on.test_path)
    with pytest.raises(ValueError, match="needs teacher_labels='train'"):
        CurateConfig(max_teacher_labelled=4)

    only = run(tmp_path, teacher_labels="train", teacher_model="someone-else")
    assert only.funnel["teacher_eligible"] == 0 and only.funnel["teacher_labelled"] == 0

    capsys.readouterr()
    assert main(["--home", str(tmp_path), "--min-examples", "5",
                 "--teacher-labels", "train"]) == 0
    shown = dict(line.split() for line in capsys.readouterr().out.splitlines()
                 if line.startswith("  ") and len(line.split()) == 2)
    assert shown["teacher_labelled"] == str(len(teacher_ids))


def test_teacher_labels_go_through_dedup_and_the_leakage_check(tmp_path: Path) -> None:
    load(tmp_path, "b1", positives(20, 10))
    v1 = run(tmp_path, near_duplicate_threshold=0.9)
    test_row = sorted(read(v1.test_path), key=lambda r: r["id"])[0]
    train_row = sorted(read(v1.train_path), key=lambda r: r["id"])[0]

    load(tmp_path, "b2", [
        record("t-leak", near_twin(test_row["query"]), test_row["expert"], None, day=21),
        record("t-copy", test_row["query"].upper(), test_row["expert"], None, day=21),
        record("t-echo", near_twin(train_row["query"]), train_row["expert"], None, day=21),
        record("t-new", clinc_query("travel", 12, 0), "travel", None, day=21)])
    v2 = run(tmp_path, near_duplicate_threshold=0.9, teacher_labels="train")
    train = ids(v2.train_path)
    assert "t-new" in train
    assert not {"t-leak", "t-copy", "t-echo"} & (train | ids(v2.test_path))
    assert v2.funnel["leakage_removed"] == 1 and v2.funnel["semantic_duplicates"] == 1
    assert v2.funnel["leakage_pairs"] == 0 and v2.funnel["teacher_labelled"] == 1
    assert ids(v2.test_path) == ids(v1.test_path)


def write_workload(folder: Path, experts: tuple[str, ...]) -> None:
    """The router's workload file in a user's folder (it shadows the shipped one)."""
    import yaml

    folder.mkdir(exist_ok=True)
    (folder / "router.yaml").write_text(yaml.safe_dump({
        "workload_id": "router",
        "experts": [{"name": e, "description": f"{e} questions"} for e in experts]}))


def test_an_added_expert_grows_the_label_space_and_a_removed_one_is_refused(tmp_path: Path
                                                                            ) -> None:
    home, folder = tmp_path / "home", tmp_path / "workloads"
    load(home, "b1", positives(20, 10))  # five experts' traffic, "work" among them
    write_workload(folder, ("banking", "travel", "home", "utility"))
    first = run(home, workloads_dir=str(folder))
    assert first.label_space_change is None  # the first version: nothing to compare with
    assert set(first.label_counts["train"]) | set(first.label_counts["test"]) == {
        "banking", "travel", "home", "utility"}  # "work" is no expert of this file yet

    write_workload(folder, ("banking", "travel", "home", "utility", "work"))
    second = run(home, workloads_dir=str(folder))
    assert second.label_space_change == {"added": ["work"], "removed": []}
    manifest = json.loads((Path(second.dataset_dir) / "manifest.json").read_text())
    assert manifest["experts"] == ["banking", "travel", "home", "utility", "work"]
    assert manifest["label_space_change"] == {"added": ["work"], "removed": []}
    assert manifest["lineage"]["parent_version"] == first.version
    # the frozen test set keeps every earlier test example and grows to include the new expert
    assert ids(first.test_path) <= ids(second.test_path)
    assert second.label_counts["test"].get("work", 0) > 0

    write_workload(folder, ("banking", "home", "utility", "work"))
    from tasks.curation.curate import LabelSpaceError

    with pytest.raises(LabelSpaceError, match="no longer include travel"):
        run(home, workloads_dir=str(folder))
    latest = json.loads((home / "datasets" / "router" / "latest.json").read_text())
    assert latest["version"] == second.version  # nothing written by the refused run


def test_a_retried_curate_builds_the_same_version(tmp_path: Path) -> None:
    """A cycle's curate retried after records (inside its window) and labels arrived returns
    the version its first try built; another run over the same data builds a new one."""
    window = {"start": "2026-11-19T00:00:00Z", "end": "2026-11-23T00:00:00Z"}
    load(tmp_path, "b1", positives(20, 10))
    first = run(tmp_path, run_key="cycle-1", **window)
    load(tmp_path, "b2", positives(21, 10))  # stored between the try and the retry
    retry = run(tmp_path, run_key="cycle-1", **window)
    assert retry == first
    assert run(tmp_path, run_key="cycle-2", **window).version != first.version


def test_every_task_of_a_run_sees_one_window() -> None:
    """A run triggered by hand has no data interval: its window ends at its run_after, fixed for
    the run, not at the moment each task starts; a scheduled run's at its interval's end."""
    from datetime import UTC, datetime

    from tasks.core.clock import run_window

    triggered = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
    windows = {run_window(7, None, triggered) for _ in range(3)}  # attribute, review, curate
    assert windows == {(datetime(2026, 11, 30, 21, 0, tzinfo=UTC), triggered)}
    nightly = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    assert run_window(1, nightly, triggered) == (datetime(2026, 12, 6, 2, 0, tzinfo=UTC),
                                                 nightly)
    with pytest.raises(ValueError, match="run_after"):
        run_window(1, None, None)


def test_the_cycle_dag_takes_its_window_from_the_run_alone() -> None:
    """No task of the cycle reads the clock for its window: every store reader calls _window."""
    import ast

    source = (Path(__file__).resolve().parents[2] / "dags" / "flywheel_cycle.py").read_text()
    tree = ast.parse(source)
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert "now" not in calls and "utcnow" not in calls
    readers = {"attribute", "review", "curate"}
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef) and function.name in readers:
            names = {n.func.id for n in ast.walk(function)
                     if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            assert "_window" in names, function.name
            readers.discard(function.name)
    assert not readers


def test_traffic_audit_labels_imported_between_cycles_are_paired_with_the_teacher(
        tmp_path: Path) -> None:
    """The audit's records wait out of the dataset (not taught as the teacher's own routes)
    until experts decide them; decided between two cycles, every one joins the second version's
    test split, where the teacher is graded on them query by query."""
    from tasks.curation.review import ReviewStore, make_decision
    from tasks.evaluation.evaluate import teacher_baseline

    load(tmp_path, "b1", positives(20, 6) + teacher_traffic())
    audit = sorted(f"t-{expert}-{k}" for expert in EXPERTS for k in range(6, 9))[::2]
    review = ReviewStore(str(tmp_path), "router")
    review.append("traffic_audit", [{"record_id": rid, "window": "w1", "seed": 0}
                                    for rid in audit])
    first = run(tmp_path, teacher_labels="train", run_key="cycle-1")
    assert not (ids(first.train_path) | ids(first.test_path)) & set(audit)  # waiting
    assert first.funnel["audit_waiting"] == len(audit)
    assert teacher_baseline(first.dataset_dir, home=str(tmp_path)).n_traffic_audit == 0

    # between the cycles experts label the audit (flywheel review export / import); one
    # disagrees with the teacher's route
    labels = {rid: rid.split("-")[1] for rid in audit}
    labels[audit[0]] = next(e for e in EXPERTS if e != labels[audit[0]])
    review.append("decisions", [make_decision(rid, label, "alice", "sme")
                                for rid, label in labels.items()])
    second = run(tmp_path, teacher_labels="train", run_key="cycle-2")
    assert set(audit) <= ids(second.test_path)
    assert second.funnel["audit_to_test"] == len(audit)
    assert ids(first.test_path) <= ids(second.test_path)  # the frozen split only grows
    teacher = teacher_baseline(second.dataset_dir, home=str(tmp_path))
    assert teacher.n_traffic_audit == len(audit)
    graded = teacher.correct.replace("-", "")
    assert len(graded) == len(audit) and graded.count("0") == 1  # paired on every one
