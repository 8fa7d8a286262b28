"""The reference router agent: routes with the champion, logs records that ingestion accepts."""

from __future__ import annotations

import json

import pytest

from tasks.demo.clinc150 import EXPERTS
from tasks.serving.agent import main, route_and_log
from tests.serving.test_serving import xs_adapter  # noqa: F401  (fixture)


def test_agent_without_a_champion_says_so(tmp_path):
    with pytest.raises(LookupError, match="no version with alias 'champion'"):
        route_and_log(["hello"], workload_id="nothing", home=str(tmp_path))
    with pytest.raises(ValueError, match="no queries"):
        route_and_log([], home=str(tmp_path))
    assert main(["--home", str(tmp_path), "--queries-file", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_agent_routes_with_the_champion_and_logs_the_contract(tmp_path, xs_base_model,
                                                              xs_adapter):  # noqa: F811
    from tasks.core.records import query_of, route_of
    from tasks.ingest.landing import IngestConfig, ingest
    from tasks.registry.register import promote, register_winner
    from tests.registry.test_register import decision, evaluation, training_run

    home = str(tmp_path)
    ev = evaluation("xs", training_run(home, tmp_path, "xs"), 0.5, str(xs_base_model),
                    str(xs_adapter))
    registered = register_winner(decision("xs"), [ev], "router", "c1", home=home)
    promote("router", registered["version"], home=home)

    queries = ["how do i freeze my card", "book a flight to paris"]
    result = route_and_log(queries, home=home, client_id="test-agent")
    assert result.model == "flywheel-router/v1"
    assert [r.query for r in result.routed] == queries
    assert all(r.expert in EXPERTS and r.latency_ms > 0 for r in result.routed)
    lines = [json.loads(x) for x in open(result.landing_file).read().splitlines()]
    assert len(lines) == 2
    assert query_of(lines[0]["request"]) == queries[0]
    assert route_of(lines[0]["response"]) == result.routed[0].expert
    assert lines[0]["model"] == "flywheel-router/v1" and lines[0]["client_id"] == "test-agent"

    ingested = ingest(IngestConfig(home=home, run_id="agent-test"))
    assert ingested.quarantined == 0 and ingested.records_parsed == 2
