"""The runs behind Stage 5's published figures, declared once.

Each entry is a result file's name -> the command (after `python`, from the repo root) that produces it:
`stage5_gpt/results/<name>.json`, with its plot `<name>.png` beside it. A run writes into its --out-dir under runs/
(benchmark.py and tokenizer.py: a JSON file under runs/stage5_gpt/); `python scripts/publish.py <out-dir>/result.json`
copies a reference run's result into stage5_gpt/results/. The README tables, the demo and scripts/reproduce.py read
this dict. A declared command names no machine's paths; it names its --out-dir (runs/stage5_gpt/<name>) only where
two runs would otherwise share train.py's default folder, which names the data set and the architecture alone: the
second seeds and the sweep's winner.
"""

# the Tiny Shakespeare run with the settings the TPE sweep (REFERENCE_SWEEPS below) chose
TUNED = ["--lr", "1.24e-3", "--weight-decay", "0.2", "--beta2", "0.95", "--warmup-steps", "200", "--pos", "rope",
         "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias", "--epochs", "9", "--time-budget", "15"]

REFERENCE_RUNS = {
    "tiny_shakespeare": ["stage5_gpt/train.py", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias",
                         "--epochs", "9", "--time-budget", "15"],
    "wikitext2": ["stage5_gpt/train.py", "--dataset", "wikitext2", "--vocab-size", "8000", "--n-embd", "192",
                  "--batch-size", "8", "--block-size", "256", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu",
                  "--no-bias", "--epochs", "10", "--time-budget", "30", "--cpu-bf16"],
    # the TPE sweep's winner (REFERENCE_SWEEPS below), trained at the full 15 minutes next to the run above, and each
    # of the two with a second seed; their own --out-dir, since the default folder names only the data set and the
    # architecture
    "tiny_shakespeare_seed2": ["stage5_gpt/train.py", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu",
                               "--no-bias", "--epochs", "9", "--time-budget", "15", "--seed", "2",
                               "--out-dir", "runs/stage5_gpt/tiny_shakespeare_seed2"],
    "tiny_shakespeare_tuned": ["stage5_gpt/train.py", *TUNED, "--out-dir", "runs/stage5_gpt/tiny_shakespeare_tuned"],
    "tiny_shakespeare_tuned_seed2": ["stage5_gpt/train.py", *TUNED, "--seed", "2",
                                     "--out-dir", "runs/stage5_gpt/tiny_shakespeare_tuned_seed2"],
    "sst2_finetune": ["stage5_gpt/finetune.py"],
    "sst2_scratch": ["stage5_gpt/finetune.py", "--from-scratch"],
    "tokenizer_wikitext2": ["stage5_gpt/tokenizer.py", "--dataset", "wikitext2", "--compare-hf"],
    "benchmark": ["stage5_gpt/benchmark.py"],
    # every parallel scheme of section 25 on 2 processes against one process, step by step (a side file and its plot)
    "parallel_equality": ["stage5_gpt/parallel_equality.py"],
    # the pipeline's bubble (section 25): how long each of 2 stages waits, GPipe and 1F1B, against (p - 1) / (m + p - 1)
    "pipeline_bubble": ["stage5_gpt/pipeline_bubble.py"],
    # the base model that sft.py instructs (BASE_CHECKPOINT below): the course's own text, at most one pass in an
    # hour of float32 training; its tokenizer carries the chat template's tokens
    "course_mix": ["stage5_gpt/train.py", "--dataset", "course_mix", "--vocab-size", "8000", "--block-size", "256",
                   "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias", "--epochs", "1",
                   "--eval-interval", "500", "--time-budget", "60"],
    # the instructed GPT (SFT_CHECKPOINT below): the base model above, fine-tuned for an hour on the mix of tasks,
    # translation, sentiment and general instructions, in the chat template
    "sft": ["stage5_gpt/sft.py", "--lr", "1e-3", "--mix", "en_fr=1,de_en=1,sst2=0.1,general=3", "--epochs", "10",
            "--time-budget", "60"],
}

# The hyperparameter searches behind Stage 5's settings, declared the same way: a search's name -> its command (after
# `python`). `python scripts/publish.py runs/sweeps/<name>/sweep.json` copies its summary and plots into
# stage5_gpt/results/sweeps/<name>/. This one re-tunes the "tiny_shakespeare" run with TPE on 5-minute proxy runs,
# selecting on the last 5 % of the training text (--select-frac), never on val, which the README reports.
REFERENCE_SWEEPS = {
    "tiny_shakespeare_tpe": ["scripts/sweep.py", "stage5_gpt/train.py", "--name", "tiny_shakespeare_tpe",
                             "--objective", "select.loss", "--sampler", "tpe", "--trials", "20", "--pruner", "median",
                             "--pruner-startup-trials", "5", "--pruner-warmup-steps", "200", "--seed", "0",
                             "--timeout", "600", "--param", "lr=loguniform:5e-4:8e-3",
                             "--param", "dropout=choice:0,0.1,0.2", "--param", "weight_decay=choice:0,0.05,0.1,0.2",
                             "--param", "beta2=choice:0.95,0.99,0.999", "--param", "warmup_steps=choice:0,50,200",
                             "--", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias",
                             "--epochs", "9", "--time-budget", "5", "--select-frac", "0.05", "--eval-interval", "100"],
}

# How a search is checked: its winner and the settings it set out to beat, trained again at the full budget and
# scored on the reported split; the README's sweep section shows each group's mean over its seeds (runs above).
SWEEP_CHECKS = {
    "tiny_shakespeare_tpe": {"hand-tuned (lr 2e-3, weight decay 0.1, β₂ 0.99, 50 warmup steps)":
                                 ["tiny_shakespeare", "tiny_shakespeare_seed2"],
                             "sweep winner (lr 1.24e-3, weight decay 0.2, β₂ 0.95, 200 warmup steps)":
                                 ["tiny_shakespeare_tuned", "tiny_shakespeare_tuned_seed2"]},
}

# The pre-trained GPT that finetune.py (its default --checkpoint), the demo and the capstone read: the best.pt the
# "wikitext2" run writes (train.py's --out-dir default is runs/stage5_gpt/<data set>_<non-default variants>).
GPT_CHECKPOINT = "runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt"

# The GPT that sft.py instructs (its default --checkpoint): a model pre-trained on the course_mix corpus, whose
# tokenizer has the chat template's tokens (train.py --dataset course_mix writes runs/stage5_gpt/course_mix_<variants>).
BASE_CHECKPOINT = "runs/stage5_gpt/course_mix_rope_rmsnorm_swiglu/best.pt"
# The instructed GPT: where sft.py writes by default; evaluate_chat.py, chat.py and the demo's chat tab read it.
SFT_CHECKPOINT = "runs/stage5_gpt/sft/best.pt"
# A LoRA adapter for the instructed GPT: English -> German, a task the instructed model never saw, learned by thin
# matrices beside its frozen weights (sft.py --lora-rank writes adapter.pt beside best.pt). The demo's chat tab switches
# it on and off.
LORA_ADAPTER = "runs/stage5_gpt/sft_en_de_lora/adapter.pt"
# Two ways to teach the instructed GPT English -> German, for the same 15 minutes: LoRA (rank 8; its adapters start at
# zero and take a larger learning rate) and full fine-tuning (SFT's rate). Each scores the new task and the old tasks
# whose forgetting it measures.
ADAPT_EN_DE = ["stage5_gpt/sft.py", "--checkpoint", SFT_CHECKPOINT, "--mix", "en_de=1", "--epochs", "10",
               "--time-budget", "15", "--score-tasks", "en_de", "en_fr", "sst2"]
LORA_COMMAND = [*ADAPT_EN_DE, "--lora-rank", "8", "--lr", "2e-3", "--out-dir", "runs/stage5_gpt/sft_en_de_lora"]
# serving the instructed GPT (docs §24): continuous batching's tokens/s against the requests in flight, then serve.py
# under a load test, one streaming client alone and then 64 at once
REFERENCE_RUNS["batching_throughput"] = ["stage5_gpt/batching.py"]
REFERENCE_RUNS["loadtest"] = ["stage5_gpt/loadtest.py"]
REFERENCE_RUNS["sft_en_de_lora"] = LORA_COMMAND
REFERENCE_RUNS["sft_en_de_full"] = [*ADAPT_EN_DE, "--lr", "1e-3", "--out-dir", "runs/stage5_gpt/sft_en_de_full"]
# LoRA again at five times the learning rate: at 2e-3 its English -> German loss fell far more slowly than full
# fine-tuning's
REFERENCE_RUNS["sft_en_de_lora_lr1e-2"] = [*ADAPT_EN_DE, "--lora-rank", "8", "--lr", "1e-2",
                                           "--out-dir", "runs/stage5_gpt/sft_en_de_lora_lr1e-2"]

# The draft GPT of speculative decoding (speculative.py's and the demo's default --draft): a small GPT trained with the
# WikiText-2 GPT's own tokenizer, so that both models read and write the same token ids.
DRAFT_CHECKPOINT = "runs/stage5_gpt/draft/best.pt"

# Smaller and faster decoding (section 22), all measured on the WikiText-2 GPT above (GPT_CHECKPOINT) and one process:
# the draft GPT of speculative decoding (DRAFT_CHECKPOINT), trained on the same text with the GPT's own tokenizer;
# int8 and int4 weights against float32 and bf16; speculative decoding per k; and, with random weights, where each
# gain starts as the model grows. mfu.py: how much of this CPU's matmul peak the GPT's training step uses (section 25).
REFERENCE_RUNS["draft"] = ["stage5_gpt/train.py", "--dataset", "wikitext2", "--tokenizer",
                           "runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/tokenizer.json", "--n-layer", "2",
                           "--n-head", "2", "--n-embd", "64", "--batch-size", "8", "--block-size", "256", "--pos", "rope",
                           "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias", "--epochs", "10", "--time-budget", "10",
                           "--cpu-bf16", "--out-dir", "runs/stage5_gpt/draft"]
REFERENCE_RUNS["quantize"] = ["stage5_gpt/quantize.py"]
REFERENCE_RUNS["quantize_int4"] = ["stage5_gpt/quantize_int4.py"]
REFERENCE_RUNS["speculative"] = ["stage5_gpt/speculative.py"]
REFERENCE_RUNS["decode_scaling"] = ["stage5_gpt/decode_scaling.py"]
REFERENCE_RUNS["mfu"] = ["stage5_gpt/mfu.py", "--compile"]
