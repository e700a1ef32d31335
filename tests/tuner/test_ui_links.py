"""Links into the MLflow UI: the runs list (not MLflow 3's GenAI overview) and one run."""

from __future__ import annotations

from tuner.ui_links import LOCAL_UI, experiment_link, link_lines, run_link, ui_address


def test_a_local_store_is_shown_where_make_ui_serves_it() -> None:
    assert ui_address("sqlite:////abs/runs/mlflow.db") == LOCAL_UI == "http://127.0.0.1:5000"
    assert ui_address("postgresql://user:secret@db:5432/mlflow") == LOCAL_UI


def test_a_tracking_server_is_its_own_ui_without_user_or_password() -> None:
    assert (
        ui_address("https://alice:secret@mlflow.example.org:8443/base/")
        == "https://mlflow.example.org:8443/base"
    )
    assert ui_address("http://10.0.0.5:5000") == "http://10.0.0.5:5000"


def test_links_open_the_runs_list_and_a_run() -> None:
    uri = "sqlite:////abs/runs/mlflow.db"
    assert experiment_link(uri, "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    assert run_link(uri, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    lines = link_lines(uri, "3", "abc", "the sweep run")
    assert lines == [
        "runs in the MLflow UI (make ui serves it):",
        "  http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning",
        "the sweep run:",
        "  http://127.0.0.1:5000/#/experiments/3/runs/abc",
    ]
    run_id = "0123456789abcdef" * 2  # MLflow's run ids are 32 hex digits
    assert all(len(line) <= 80 for line in link_lines(uri, "999", run_id, "the sweep run"))
    assert "make ui" not in link_lines("http://mlflow:5000", "3")[0]
