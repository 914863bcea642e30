def test_placeholder_removed_once_the_contract_suite_lands(store):
    run = store.create({"runId": "r1", "pipelineId": "p"})
    assert store.get("r1").version == run.version == 1
