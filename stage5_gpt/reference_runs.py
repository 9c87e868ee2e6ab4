"""The runs behind Stage 5's published figures, declared once.

Each entry is a result file's name -> the command (after `python`, from the repo root) that produces it:
`stage5_gpt/results/<name>.json`, with its plot `<name>.png` beside it. A run writes into its --out-dir under runs/
(benchmark.py and tokenizer.py: a JSON file under runs/stage5_gpt/); `python scripts/publish.py <out-dir>/result.json`
copies a reference run's result into stage5_gpt/results/. The README tables, the demo and scripts/reproduce.py read
this dict.
"""

REFERENCE_RUNS = {
    "tiny_shakespeare": ["stage5_gpt/train.py", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias",
                         "--epochs", "9", "--time-budget", "15"],
    "wikitext2": ["stage5_gpt/train.py", "--dataset", "wikitext2", "--vocab-size", "8000", "--n-embd", "192",
                  "--batch-size", "8", "--block-size", "256", "--pos", "rope", "--norm", "rmsnorm", "--mlp", "swiglu",
                  "--no-bias", "--epochs", "10", "--time-budget", "30", "--cpu-bf16"],
    "sst2_finetune": ["stage5_gpt/finetune.py"],
    "sst2_scratch": ["stage5_gpt/finetune.py", "--from-scratch"],
    "tokenizer_wikitext2": ["stage5_gpt/tokenizer.py", "--dataset", "wikitext2", "--compare-hf"],
    "benchmark": ["stage5_gpt/benchmark.py"],
}

# The pre-trained GPT that finetune.py (its default --checkpoint), the demo and the capstone read: the best.pt the
# "wikitext2" run writes (train.py's --out-dir default is runs/stage5_gpt/<data set>_<non-default variants>).
GPT_CHECKPOINT = "runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt"
