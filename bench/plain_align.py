"""The baseline for bench/bench_align.py: each alignment trainer as a plain TRL
script, no platform, the same settings as the platform job.

    python bench/plain_align.py reward|dpo|grpo|ppo MODEL_DIR DATASET_DIR STEPS [REWARD_MODEL_DIR]

DATASET_DIR: a data set saved with `datasets` (the platform's registered copy:
its train split is what the platform job trains on, in the same order).
Prints one JSON line: steps, train seconds (the trainer's train(), loading left out), steps/s.
"""

import copy
import json
import sys
import tempfile
import time

import torch
from datasets import Dataset, load_from_disk
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

# as the platform job: checkpoints every save_steps (the bench sets more steps than it runs), which
# makes transformers write one at the last step, the checkpoint a pause or an evaluation reads
CPU = dict(report_to=[], disable_tqdm=True, bf16=False, gradient_checkpointing=False, use_cpu=True, seed=0, data_seed=0,
           logging_steps=1, save_strategy="steps", save_steps=10_000, per_device_train_batch_size=4,
           output_dir=tempfile.mkdtemp(prefix="plain-align-bench-"))


def lora(task: str) -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type=task)


def user(text: str) -> list:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list:
    return [{"role": "assistant", "content": text}]


def main(kind: str, model_dir: str, data_path: str, steps: int, rm_dir: str = "") -> None:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = list(load_from_disk(data_path)["train"])
    if kind in ("reward", "dpo"):
        data = Dataset.from_list([{"prompt": user(r["prompt"]), "chosen": assistant(r["chosen"]), "rejected": assistant(r["rejected"])}
                                  for r in rows])
    if kind == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        args = RewardConfig(**CPU, max_steps=steps, learning_rate=1e-4, max_length=256)
        trainer = RewardTrainer(model=get_peft_model(model, lora("SEQ_CLS")), args=args, train_dataset=data, processing_class=tok)
    elif kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora("CAUSAL_LM"))
        args = DPOConfig(**CPU, max_steps=steps, learning_rate=5e-5, max_length=256, beta=0.1, loss_type=["sigmoid"])
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    elif kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        def contains(prompts, completions, **kw):
            texts = ["".join(m["content"] for m in c) if isinstance(c, list) else c for c in completions]
            return [float("the" in t.lower()) for t in texts]

        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora("CAUSAL_LM"))
        args = GRPOConfig(**CPU, max_steps=steps, learning_rate=2e-5, num_generations=4, max_completion_length=32,
                          temperature=1.0, beta=0.04, loss_type="dapo", scale_rewards="group")
        data = Dataset.from_list([{"prompt": user(r["prompt"])} for r in rows])
        trainer = GRPOTrainer(model=model, reward_funcs=[contains], args=args, train_dataset=data, processing_class=tok)
    else:
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        tok.pad_token = tok.unk_token  # not EOS (the platform picks the same for the starter)
        policy = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora("CAUSAL_LM"))
        reference = copy.deepcopy(policy).merge_and_unload().eval().requires_grad_(False)
        reward_model = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1, dtype=torch.float32)
        value_model = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1, dtype=torch.float32)
        for m in (reward_model, value_model):
            m.config.pad_token_id = tok.pad_token_id
        data = Dataset.from_list([{"input_ids": tok.apply_chat_template(user(r["prompt"]), add_generation_prompt=True,
                                                                        tokenize=True, return_dict=True)["input_ids"]} for r in rows])
        cpu = {k: v for k, v in CPU.items() if k != "data_seed"}
        args = PPOConfig(**cpu, data_seed=0, total_episodes=steps * 4, learning_rate=3e-5, response_length=32, temperature=0.7,
                         kl_coef=0.05, num_ppo_epochs=2, missing_eos_penalty=1.0, stop_token="eos",
                         local_rollout_forward_batch_size=4, num_sample_generations=0)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=reference, reward_model=reward_model,
                             value_model=value_model, train_dataset=data)
    start = time.perf_counter()
    out = trainer.train()
    # the trainer's own train_runtime where it has one (as the platform reports); PPO's train() returns nothing
    seconds = out.metrics["train_runtime"] if out is not None else time.perf_counter() - start
    print(json.dumps({"steps": trainer.state.global_step, "train_seconds": seconds, "steps_per_s": trainer.state.global_step / seconds}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "")
