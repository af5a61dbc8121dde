"""The command line forms other checks script against."""

from __future__ import annotations

import json
import os

from core.jobs import lifecycle as jobs


def test_create_wait_list_show(cli):
    out = cli("models", "create", "--arch", "gpt2", "--size", "tiny", "--name", "cli-tiny", "--wait")
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.strip().splitlines()[-1])
    assert f"job {job_id} succeeded" in out.stderr

    shown = json.loads(cli("jobs", "show", str(job_id), "--json").stdout)
    assert {"id", "kind", "status", "pid", "progress", "error"} <= set(shown)
    assert shown["status"] == "succeeded" and shown["kind"] == "create_model" and shown["error"] is None
    assert shown["progress"]["fraction"] == 1.0
    assert shown["command"] == "python -m core models create --name cli-tiny"

    listed = json.loads(cli("models", "list", "--json").stdout)
    assert [(m["name"], m["status"], m["source"]) for m in listed] == [("cli-tiny", "available", "scratch")]
    one = json.loads(cli("models", "show", "cli-tiny", "--json").stdout)
    assert one["num_parameters"] > 0 and one["lineage"]
    assert json.loads(cli("jobs", "list", "--json").stdout)[0]["id"] == job_id
    assert "worker pid" in cli("jobs", "logs", str(job_id)).stdout
    assert "succeeded" in cli("jobs", "logs", str(job_id), "--follow").stdout
    assert cli("jobs", "wait", str(job_id)).returncode == 0


def test_without_wait_prints_the_job_id_last(cli):
    out = cli("models", "create", "--size", "tiny", "--name", "no-wait")
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.strip().splitlines()[-1])
    assert cli("jobs", "wait", str(job_id)).returncode == 0
    assert jobs.get(job_id).status == "succeeded"


def test_failed_job_exits_nonzero_saying_why(cli):
    out = cli("models", "import", "distilgpt2", "--name", "hub", "--wait")
    assert out.returncode != 0
    assert "failed (bad_input)" in out.stderr and "cannot reach the Hugging Face Hub" in out.stderr
    job_id = int(out.stdout.strip().splitlines()[-1])
    waited = cli("jobs", "wait", str(job_id))
    assert waited.returncode != 0 and "bad_input" in waited.stderr


def test_bad_input_is_refused_before_anything_is_written(cli, home):
    out = cli("models", "create", "--size", "tiny", "--n-head", "5", "--name", "bad")
    assert out.returncode == 2
    assert "n_head: 5 heads do not divide hidden_size 64" in out.stderr
    assert json.loads(cli("jobs", "list", "--json").stdout) == []
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_delete_needs_confirmation(cli):
    assert cli("models", "create", "--size", "tiny", "--name", "gone", "--wait").returncode == 0
    refused = cli("models", "delete", "gone")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert cli("models", "delete", "gone", "--yes").returncode == 0
    assert json.loads(cli("models", "list", "--json").stdout) == []


def test_relative_paths_are_taken_from_where_the_command_runs(cli, home, tmp_path):
    assert cli("models", "create", "--size", "tiny", "--name", "src", "--wait").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "corpora").mkdir(parents=True)
    (elsewhere / "corpora" / "mine.txt").write_text("hello world, a tiny corpus of words. " * 200)
    src = home / "models" / "1"
    out = cli("models", "import", os.path.relpath(src, elsewhere), "--name", "rel", "--wait", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    out = cli("models", "create", "--size", "tiny", "--vocab-size", "300", "--corpus", "corpora/mine.txt", "--name", "c", "--wait", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    shown = json.loads(cli("models", "show", "c", "--json").stdout)
    assert shown["details"]["corpus"] == str(elsewhere / "corpora" / "mine.txt")


def test_data_import_refuses_bad_rows_then_drops_them(cli, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": ""}\nnot json\n')
    refused = cli("data", "import", str(path), "--name", "mixed", "--wait")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "line 2: field 'prompt' is empty" in refused.stderr and "line 3: invalid JSON" in refused.stderr
    assert json.loads(cli("data", "list", "--json").stdout) == []
    assert json.loads(cli("jobs", "list", "--json").stdout) == []

    done = cli("data", "import", str(path), "--name", "mixed", "--drop-bad-rows", "--wait")
    assert done.returncode == 0, done.stderr
    shown = json.loads(cli("data", "show", "mixed", "--json").stdout)
    assert shown["num_rows"] == 1 and shown["format"] == "instruction"
    assert [d["line"] for d in shown["details"]["dropped"]] == [2, 3]


def test_data_import_with_format_and_mapping(cli, tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("q,a\nWhat is 1+1?,2\n")
    out = cli("data", "import", str(path), "--name", "qa", "--format", "instruction", "--map", "prompt=q", "--map", "response=a", "--wait")
    assert out.returncode == 0, out.stderr
    listed = json.loads(cli("data", "list", "--json").stdout)
    assert [(d["name"], d["num_rows"]) for d in listed] == [("qa", 1)]
    assert listed[0]["details"]["mapping"] == {"prompt": "q", "response": "a"}
    assert "prompt <- q, response <- a" in cli("jobs", "logs", str(int(out.stdout.split()[-1]))).stdout
