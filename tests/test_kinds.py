"""The kinds table and what every spec derives from its fields: run functions,
traits, YAML and replay commands that round-trip, and refusals that name the
field from YAML, from the command line and from a form."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.cli import build_parser, spec_from_args
from core.kinds import KINDS, spec_class, spec_from_dict, traits
from core.spec import OUTPUTS, SpecError

SAMPLES = ROOT / "assets" / "samples"
# One spec per kind with fields away from their defaults (every type: text, int,
# float, bool, choice, list, mapping, optional, secret). A new kind needs one here.
EXAMPLES: dict[str, dict] = {
    "create_model": dict(name="t", size="custom", n_layer=2, hidden_size=32, n_head=4, context_length=64, vocab_size=400, seed=3),
    "add_starter": dict(name="my starter"),
    "import_model": dict(source="gpt2", name="g", revision="main"),
    "import_dataset": dict(path=str(SAMPLES / "chat.jsonl"), name="c", format="chat", mapping={"messages": "messages"},
                           drop_bad_rows=True, validation_fraction=0.2, seed=2, tokenizer_model="base"),
    "sft": dict(model="base", dataset="d", output_name="o", method="full", learning_rate="2e-4", epochs=1.5,
                packing=True, completion_only=False, seed=4, lora_targets="q_proj,v_proj", processes=2),
    "reward": dict(model="base", dataset="prefs", output_name="rm", method="full", center_rewards=0.01, max_steps=5),
    "dpo": dict(model="sft", dataset="prefs", output_name="o", beta=0.2, loss_type="ipo", label_smoothing=0.1, eval_steps=3),
    "grpo": dict(model="sft", dataset="prompts", output_name="o", reward_model="rm", contains=["yes", "sure"],
                 avoids=["no"], match="numeric", target_length=20, format_regex=r"^\d+$",
                 reward_weights={"model": 0.5, "length": 2.0}, num_generations=2, temperature=0.9, loss_type="grpo"),
    "ppo": dict(model="sft", dataset="prompts", reward_model="rm", output_name="o", kl_coef=0.1, num_ppo_epochs=2,
                response_length=16, pad_token="<|pad|>", missing_eos_penalty=0.5),
    "merge_adapter": dict(model="an adapter", output_name="merged one"),
    "export_onnx": dict(model="m", output_name="m onnx", int8=True, int4=True, opset=20, verify_steps=8),
    "export_triton": dict(model="m", output_name="m triton", int4=True, instance="gpu", max_tokens=64, opset=19, verify_steps=6),
    "eval_perplexity": dict(model="m", dataset="d", split="train", max_length=64, stride=16, checkpoints=True),
    "eval_generation": dict(model="m", dataset="d", temperature=0.7, top_p=0.9, seed=5, max_samples=0),
    "eval_judge": dict(model="m", dataset="d", judge_url="http://127.0.0.1:9/v1", judge_api_key="sekrit", rubric="strict"),
    # the lm-eval replay once dropped seed and batch_size: a replay ran with seed 0
    "eval_lm_eval": dict(model="m", tasks=["a", "b"], seed=3, batch_size=2, limit=4),
    "eval_reward": dict(model="m", dataset="d", reward_model="rm", max_new_tokens=16, checkpoints=True),
    "deploy_triton": dict(export="m triton", http_port=8100, grpc_port=8101, threads=1),
    "serve": dict(models=["m", "an adapter"], backend="onnx", exports=["m onnx"], host="0.0.0.0", port=8123, api_key="sekrit", max_tokens=64, cache_tokens=4096),
}


@pytest.fixture(autouse=True)
def judge_key(monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sekrit")  # what a replayed --judge-api-key-env reads
    monkeypatch.setenv("API_KEY", "sekrit")  # and --api-key-env


@pytest.mark.fast
def test_every_kind_has_an_example():
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.fast
def test_importing_the_table_and_every_spec_loads_no_ml_library():
    code = (
        "import sys, core.kinds, core.cli, core.spec\n"
        "for k in core.kinds.KINDS.values(): k.spec\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'lm_eval') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.fast
@pytest.mark.parametrize("kind", list(KINDS))
def test_run_function_resolves_and_lives_with_its_spec(kind):
    entry = KINDS[kind]
    assert entry.spec.kind == kind
    assert callable(entry.run) and entry.run.__name__.startswith("run_")
    assert entry.run.__module__ == entry.spec.__module__  # one kind, one file


@pytest.mark.fast
@pytest.mark.parametrize("kind", list(KINDS))
def test_traits_are_consistent(kind):
    cls = KINDS[kind].spec
    assert cls.output in OUTPUTS
    fields = set(cls.model_fields)
    assert set(cls.input_models) <= fields and set(cls.input_datasets) <= fields
    assert set(cls.positional) <= fields and set(cls.flags) <= fields and set(cls.secrets) <= fields
    assert cls.command and cls.command[0] in ("models", "data", "train", "eval", "export", "serve", "deploy")
    if cls.output in ("model", "dataset", "export"):
        assert cls.output_field in fields
    assert bool(cls.export_format) == (cls.output == "export")
    if cls.output == "model":  # it says where its weights come from
        source, _ = cls(**EXAMPLES[kind]).model_source()
        assert source in ("starter", "hub", "local", "scratch", "trained", "adapter")
    if cls.trains:
        assert {"resume_from_job", "processes", "seed"} <= fields
    for name in fields:
        assert cls.doc(name), f"{kind}.{name} has no one-line doc"


@pytest.mark.fast
@pytest.mark.parametrize("kind", list(KINDS))
def test_spec_round_trips_through_yaml(kind):
    spec = spec_class(kind)(**EXAMPLES[kind])
    text = spec.to_yaml()
    assert "sekrit" not in text  # a secret is named by its environment variable, never written
    assert spec_from_dict(yaml.safe_load(text)) == spec
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # spec.json


@pytest.mark.fast
@pytest.mark.parametrize("kind", list(KINDS))
def test_replay_command_parses_back_to_the_same_spec(kind):
    spec = spec_class(kind)(**EXAMPLES[kind])
    command = spec.replay()
    assert command.startswith("python -m core " + " ".join(spec.command)) and "sekrit" not in command
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert args.spec_cls is type(spec)
    assert spec_from_args(args.spec_cls, args) == spec


@pytest.mark.fast
def test_lm_eval_replay_keeps_seed_and_batch_size():
    command = spec_class("eval_lm_eval")(**EXAMPLES["eval_lm_eval"]).replay()
    assert "--seed 3" in command and "--batch-size 2" in command


@pytest.mark.fast
@pytest.mark.parametrize(
    "changes, field, says",
    [
        (dict(lora_r="eight"), "lora_r", "valid integer"),
        (dict(lora_r=0), "lora_r", "greater than or equal to 1"),
        (dict(method="dora"), "method", "'full', 'lora' or 'qlora'"),
        (dict(learning_rate="fast"), "learning_rate", "valid number"),
        (dict(packing="sometimes"), "packing", "valid boolean"),
        (dict(batch_size=True), "batch_size", "not a number"),
        (dict(output_name="a/b"), "output_name", "not a usable name"),
        (dict(max_stepz=5), "max_stepz", "not a field of sft"),
    ],
)
def test_a_bad_field_is_refused_by_name(changes, field, says):
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"kind": "sft", "model": "base", "dataset": "d", "output_name": "o", **changes})
    assert caught.value.field == field and says in str(caught.value)


@pytest.mark.fast
def test_a_kind_this_version_lacks_reads_as_plain_traits():
    # a job row from another version sharing the database: listed, never trained, resumed or given a free slot
    gone = traits("dpo_from_the_future")
    assert (gone.trains, gone.service, gone.busy, gone.output) == (False, False, "in use", "")
    assert traits("sft") is KINDS["sft"].spec


@pytest.mark.fast
def test_a_missing_field_and_an_unknown_kind_are_named():
    with pytest.raises(SpecError, match=r"^output_name: required \(Name of the new model"):
        spec_from_dict({"kind": "sft", "model": "base", "dataset": "d"})
    with pytest.raises(SpecError, match="kind: unknown job kind 'sftt'"):
        spec_from_dict({"kind": "sftt"})


def test_bad_fields_from_yaml_and_from_the_command_line(cli, tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("kind: sft\nmodel: base\ndataset: d\noutput_name: o\nmethod: dora\n")
    out = cli("run", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{bad}: line 5: method: 'dora': input should be 'full', 'lora' or 'qlora'" in out.stderr
    out = cli("train", "sft", "--model", "base", "--dataset", "d", "--output-name", "o", "--lora-r", "0")
    assert out.returncode == 2 and "lora_r: '0': input should be greater than or equal to 1" in out.stderr
    out = cli("eval", "perplexity", "--model", "m", "--dataset", "d", "--split", "test")
    assert out.returncode == 2 and "split: 'test': input should be" in out.stderr
    out = cli("models", "create", "--name", "x", "--size", "huge")
    assert out.returncode == 2 and "size: 'huge'" in out.stderr
    nokind = tmp_path / "nokind.yaml"
    nokind.write_text("model: base\n")
    out = cli("run", str(nokind))
    assert out.returncode == 2 and "kind: say which job this is" in out.stderr
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00kind")
    out = cli("run", str(binary))
    assert out.returncode == 2 and "not UTF-8 text" in out.stderr and "Traceback" not in out.stderr
    deep = tmp_path / "deep.yaml"
    deep.write_text("kind: sft\nmodel: " + "[" * 5000 + "]" * 5000 + "\n")
    out = cli("run", str(deep))
    assert out.returncode == 2 and "Traceback" not in out.stderr


@pytest.mark.fast
def test_a_form_names_the_bad_field(home):
    st.cache_resource.clear()
    app = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60).run()
    app.switch_page("pages/1_Models.py").run()
    app.text_input(key="create_name").input("bad/name")
    app.selectbox(key="create_arch").set_value("llama")
    submit = [b for b in app.button if b.label == "Create model"]
    submit[0].click().run()
    assert any("Not started: name:" in e.value and "not a usable name" in e.value for e in app.error)
    st.cache_resource.clear()


@pytest.mark.fast
def test_form_widgets_take_choices_and_defaults_from_the_spec(home):
    from core.training.sft import SFTSpec

    st.cache_resource.clear()
    app = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60).run()
    app.switch_page("pages/1_Models.py").run()
    arch = app.selectbox(key="create_arch")
    size = app.selectbox(key="create_size")
    create = spec_class("create_model")
    assert tuple(arch.options) == create.choices("arch") and arch.value == create.default("arch")
    assert tuple(size.options) == create.choices("size") and size.value == create.default("size")
    assert app.number_input(key="create_seed").value == 0
    st.cache_resource.clear()
    assert SFTSpec.choices("method") == ("full", "lora", "qlora")


@pytest.mark.fast
def test_a_value_left_to_the_kind_says_where_it_came_from():
    """A learning rate of 0 is the kind's default for the method: resolved() names the
    value and its source (the worker logs it), with_resolved() writes it in."""
    trains = [(kind, k) for kind, k in KINDS.items() if traits(kind).trains]
    assert {"sft", "reward", "dpo", "grpo", "ppo"} <= {kind for kind, _ in trains}
    for kind, k in trains:
        required = {"model": "m", "dataset": "d", "output_name": "o"}
        for method, default in (("full", k.spec.default_lr[0]), ("lora", k.spec.default_lr[1])):
            spec = k.spec(**required, method=method, **({"reward_model": "rm"} if kind in ("ppo", "grpo") else {}))
            value, source = spec.resolved()["learning_rate"]
            assert value == default and "learning_rate 0 in the spec" in source and kind.upper() in source.upper()
            assert spec.with_resolved().learning_rate == default and spec.learning_rate == 0
            assert yaml.safe_load(spec.with_resolved().to_yaml())["learning_rate"] == default
        assert k.spec(**required, learning_rate=1e-3, **({"reward_model": "rm"} if kind in ("ppo", "grpo") else {})).resolved() == {}
