"""Data sets: every malformed input gives its line and message and leaves nothing
behind; the samples import; the preview is what training sees."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core.data import files
from core.data import registry as datasets
from core.data.importer import ImportDatasetSpec
from core.jobs import lifecycle as jobs
from core.models.create import CreateModelSpec
from core.spec import SpecError
from storage.db import session
from storage.tables import Dataset

BAD_CASES = [
    # (file name, content, expected messages)
    ("a.jsonl", '{"prompt": "p", "response": "r"}\n{"prompt": "x"\n', ["line 2: invalid JSON: Expecting ',' delimiter"]),
    ("b.jsonl", '{"prompt": "p", "response": "r"}\n{"prompt": "", "response": "r"}\n', ["line 2: field 'prompt' is empty"]),
    ("c.jsonl", '{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n', ["line 2: field 'response' is missing"]),
    ("d.jsonl", '{"prompt": "p", "response": "r"}\n{"prompt": 5, "response": "r"}\n', ["line 2: field 'prompt' must be text, got int"]),
    ("e.jsonl", '{"prompt": "p", "response": "r"}\n[1, 2]\n', ["line 2: expected a JSON object, got list"]),
    ("f.jsonl", b'{"prompt": "p", "response": "r"}\n{"prompt": "\xff", "response": "r"}\n', ["line 2: undecodable bytes (not UTF-8)"]),
    (
        "g.jsonl",
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"messages": [{"role": "user", "content": "hi"}]}\n',
        ["line 2: message 1: unknown role 'robot'", "line 3: the conversation has no assistant message"],
    ),
    ("h.csv", 'prompt,chosen,rejected\np,c,r\np,,r\n', ["line 3: field 'chosen' is empty"]),
    ("i.csv", 'text\nhello\n"a","b"\n', ["line 3: more fields than the header has columns"]),
]


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.fast
@pytest.mark.parametrize("name,content,expected", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_rows_are_reported_by_line(tmp_path, name, content, expected):
    norm = files.normalize(files.read_file(write(tmp_path, name, content)))
    report = norm.report()
    for message in expected:
        assert message in report
    assert len(norm.rows) == 1 and norm.lines == [2 if name.endswith(".csv") else 1]


@pytest.mark.fast
@pytest.mark.parametrize(
    "name,content,message",
    [
        ("bad.json", '[{"text": "a"},\n {"text": "b",}]', "bad.json: line 2: invalid JSON"),
        ("bad.json", '{"text": "not a list"}', "expected a JSON array of objects"),
        ("bad.txt", "hello", "unsupported file type"),
        ("bad.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_unreadable_files_say_why(tmp_path, name, content, message):
    with pytest.raises(files.DatasetError, match=message):
        files.read_file(write(tmp_path, name, content))


@pytest.mark.fast
def test_wrong_format_names_the_missing_columns(tmp_path):
    parsed = files.read_file(write(tmp_path, "x.jsonl", '{"text": "a"}\n'))
    with pytest.raises(files.DatasetError, match="format 'preference' needs column\\(s\\) prompt, chosen, rejected"):
        files.normalize(parsed, "preference")


@pytest.mark.fast
@pytest.mark.parametrize(
    "columns,fmt",
    [
        (["instruction", "input", "output"], "instruction"),
        (["question", "answer"], "instruction"),
        (["messages"], "chat"),
        (["conversations"], "chat"),
        (["prompt", "chosen", "rejected"], "preference"),
        (["prompt", "solution"], "prompt"),
        (["text"], "text"),
    ],
)
def test_format_detection(columns, fmt):
    assert files.detect_format(columns) == fmt


@pytest.mark.fast
def test_alpaca_columns_are_mapped(tmp_path):
    path = write(tmp_path, "alpaca.json", json.dumps([{"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}]))
    norm = files.normalize(files.read_file(path))
    assert norm.mapping == {"prompt": "instruction", "response": "output", "input": "input"}
    assert norm.rows == [{"prompt": "Say hi\n\nto Bob", "response": "Hi Bob", "system": ""}]


def test_refused_import_leaves_nothing(home, tmp_path):
    path = write(tmp_path, "bad.jsonl", BAD_CASES[1][1])
    with pytest.raises(SpecError, match="path: 1 bad row") as caught:
        jobs.submit(ImportDatasetSpec(path=str(path), name="bad"))
    assert "line 2: field 'prompt' is empty" in str(caught.value) and "--drop-bad-rows" in str(caught.value)
    with session() as s:
        assert s.scalars(select(Dataset)).all() == []
    assert jobs.list_jobs() == []
    assert not (home / "datasets").exists() or list((home / "datasets").iterdir()) == []


MALFORMED = [
    # what a user could bring, and what the refusal says (before any job starts)
    ("empty.jsonl", b"", "empty.jsonl has no rows"),
    ("blank.jsonl", b"\n   \n\t\n", "blank.jsonl has no rows"),
    ("empty.json", b"[]", "empty.json has no rows"),
    ("header.csv", b"prompt,response\n", "header.csv has no rows"),
    ("deep.json", b"[" * 5000 + b"]" * 5000, "deep.json: line 1: nested more than 100 levels deep"),
    ("deeper.jsonl", b'{"text": "ok"}\n{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
     "line 2: nested more than 100 levels deep at column 109"),
    ("binary.jsonl", bytes(range(128, 256)) * 4, "not UTF-8"),
    ("chat.csv", b'messages\n"' + b"[" * 3000 + b']"\n', "field 'messages' must be a list of messages"),
]


@pytest.mark.parametrize("name,content,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_are_refused_before_a_job_starts(home, tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(SpecError, match="^path: ") as caught:
        jobs.submit(ImportDatasetSpec(path=str(path), name="m"))
    assert message in str(caught.value)
    assert jobs.list_jobs() == [] and datasets.list_datasets() == []


@pytest.mark.fast
def test_malformed_file_on_the_command_line_has_no_traceback(cli, tmp_path):
    for content in (b"", b"[" * 5000 + b"]" * 5000):
        path = write(tmp_path, "x.json", content)
        out = cli("data", "import", str(path), "--name", "x", "--wait")
        assert out.returncode == 2 and out.stderr.startswith("error: path: ") and "Traceback" not in out.stderr


@pytest.mark.fast
def test_other_refusals_name_the_field(home, tmp_path):
    folder = tmp_path / "looks.jsonl"
    folder.mkdir()
    with pytest.raises(SpecError, match="path: .* is not a file"):
        ImportDatasetSpec(path=str(folder), name="x")
    ok = write(tmp_path, "ok.jsonl", '{"text": "a"}\n')
    with pytest.raises(SpecError, match="mapping: 'answr' is not a field of any format"):
        ImportDatasetSpec(path=str(ok), name="x", mapping={"answr": "a"})
    with pytest.raises(SpecError, match="mapping: 'answer': write it as FIELD=COLUMN"):
        ImportDatasetSpec(path=str(ok), name="x", mapping=["answer"])
    with pytest.raises(SpecError, match="validation_fraction: 0.9: input should be less than or equal to 0.5"):
        ImportDatasetSpec(path=str(ok), name="x", validation_fraction=0.9)


def test_drop_bad_rows_imports_the_rest_and_reports(home, tmp_path):
    path = write(tmp_path, "mixed.jsonl", BAD_CASES[6][1])
    job = jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="mixed", drop_bad_rows=True)), timeout_s=120)
    assert job.status == "succeeded", job.log_tail
    row = datasets.find("mixed")
    assert row.num_rows == 1 and row.format == "chat"
    assert [d["line"] for d in row.details["dropped"]] == [2, 3]
    assert datasets.load(row)["train"][0]["messages"][1]["content"] == "yo"


def test_samples_import_with_splits_and_token_stats(home):
    model = jobs.wait(jobs.submit(CreateModelSpec(name="tok", size="tiny")), timeout_s=120)
    assert model.status == "succeeded"
    ids = {}
    for file, (name, _) in files.SAMPLE_FILES.items():
        ids[name] = jobs.submit(ImportDatasetSpec(path=str(files.SAMPLES / file), name=name))
    for job_id in ids.values():
        assert jobs.wait(job_id, timeout_s=120).status == "succeeded", jobs.get(job_id).log_tail
    for name, fmt in files.SAMPLE_FILES.values():
        row = datasets.find(name)
        assert row.format == fmt and row.num_rows >= 300
        splits = datasets.load(row)
        assert len(splits["train"]) + len(splits["validation"]) == row.num_rows
        assert 0.05 < len(splits["validation"]) / row.num_rows < 0.15
        tokens = row.details["tokens"]
        assert tokens["tokenizer_model"] == "tok" and tokens["total"] > 1000 and tokens["p95"] <= tokens["max"]
        assert len(row.fingerprint) == 16
    # same content, same fingerprint; a data set in use cannot be deleted
    again = files.normalize(files.read_file(files.SAMPLES / "chat.jsonl"))
    assert files.fingerprint(again.rows) == datasets.find("sample-chat").fingerprint


def test_name_taken_and_bad_spec_fields(home, tmp_path):
    path = write(tmp_path, "ok.jsonl", '{"text": "hello there"}\n')
    assert jobs.wait(jobs.submit(ImportDatasetSpec(path=str(path), name="ok")), timeout_s=120).status == "succeeded"
    with pytest.raises(SpecError, match="a data set named 'OK' already exists"):
        jobs.submit(ImportDatasetSpec(path=str(path), name="OK"))
    with pytest.raises(SpecError, match="format: 'tabular': input should be"):
        ImportDatasetSpec(path=str(path), name="x", format="tabular")
    with pytest.raises(SpecError, match="path: .* is not a file"):
        ImportDatasetSpec(path=str(tmp_path / "nope.jsonl"), name="x")
    datasets.rename(datasets.find("ok").id, "renamed")
    datasets.delete(datasets.find("renamed").id)
    assert datasets.list_datasets() == []


def test_preview_matches_the_training_view(home):
    from transformers import AutoTokenizer

    from core.data.render import render_segments, training_example

    row_id = jobs.wait(jobs.submit(CreateModelSpec(name="tok", size="tiny")), timeout_s=120).result["model_id"]
    from core.models import registry as models

    tok = AutoTokenizer.from_pretrained(home / models.get(row_id).path)
    row = {"prompt": "Say hi", "response": "Hi!", "system": ""}
    assert training_example("instruction", row, tok) == {
        "prompt": [{"role": "user", "content": "Say hi"}],
        "completion": [{"role": "assistant", "content": "Hi!"}],
    }
    assert render_segments("instruction", row, tok) == [
        ("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hi!<|im_end|>\n", True),
    ]
    assert render_segments("text", {"text": "abc"}, tok) == [("abc<|endoftext|>", True)]
    tok.chat_template = None  # a model without a template gets a plain prompt format
    assert render_segments("instruction", row, tok) == [
        ("### Instruction:\nSay hi\n\n### Response:\n", False),
        ("Hi!<|endoftext|>", True),
    ]


@pytest.mark.fast
def test_line_numbers_of_multiline_csv_and_json_records(tmp_path):
    path = write(tmp_path, "m.csv", 'prompt,response\n"a\nlong\nprompt",ok\n"p",\n')
    norm = files.normalize(files.read_file(path))
    assert [str(p) for p in norm.problems] == ["line 5: field 'response' is empty"]
    assert norm.lines == [2]
    path = write(tmp_path, "r.json", json.dumps([{"text": "a"}, {"text": ""}]))
    assert str(files.normalize(files.read_file(path)).problems[0]) == "record 2: field 'text' is empty"


@pytest.mark.fast
def test_columns_seen_anywhere_are_mapped(tmp_path):
    rows = [{"prompt": f"p{i}", "response": "r"} for i in range(1500)] + [{"prompt": "p", "response": "r", "system": "Be brief."}]
    path = write(tmp_path, "late.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    norm = files.normalize(files.read_file(path))
    assert norm.mapping.get("system") == "system" and norm.rows[-1]["system"] == "Be brief."


@pytest.mark.fast
def test_a_chat_needs_a_user_turn_and_a_bom_is_fine(tmp_path):
    path = write(tmp_path, "c.jsonl", '\ufeff{"messages": [{"role": "assistant", "content": "hi"}]}\n'.encode("utf-8"))
    norm = files.normalize(files.read_file(path), "chat")
    assert [str(p) for p in norm.problems] == ["line 1: the conversation needs a user message before the last assistant message"]
