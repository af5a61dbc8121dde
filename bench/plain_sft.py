"""The baseline: a plain TRL script, no platform, same settings as the platform job.

    python bench/plain_sft.py MODEL_DIR DATA_JSONL STEPS [--packing]

Prints one JSON line: steps, train seconds, trained tokens, tokens/s, peak RSS (MB).
"""

import json
import resource
import sys
import time

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def main(model_dir: str, data_path: str, steps: int, packing: bool) -> None:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in open(data_path)]
    examples = []
    for r in rows:
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        examples.append({"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": r["output"]}]})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    args = SFTConfig(
        output_dir="/tmp/plain-sft-bench",
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=2e-4,
        max_length=256,
        packing=packing,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        data_seed=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tok)
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h][-1]
    print(
        json.dumps(
            {
                "steps": trainer.state.global_step,
                "train_seconds": seconds,
                "train_runtime": out.metrics["train_runtime"],
                "tokens": tokens,
                "tokens_per_s": tokens / out.metrics["train_runtime"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--packing" in sys.argv[4:])
