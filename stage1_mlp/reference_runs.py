"""The runs behind Stage 1's published figures, declared once.

Each entry is a result file's name -> the command (after `python`, from the repo root) that produces it:
`stage1_mlp/results/<name>.json`, with its plots `<name>.png` and `<name>_confusion.png` beside it. A run writes into
its --out-dir under runs/; `python scripts/publish.py <out-dir>/result.json` copies a reference run's result into
stage1_mlp/results/. The README tables, the demo and scripts/reproduce.py read this dict.
"""

REFERENCE_RUNS = {
    "imdb": ["stage1_mlp/train.py"],
    "sst2": ["stage1_mlp/train.py", "--dataset", "sst2", "--emb-dim", "64", "--dropout", "0.5", "--lr", "1e-3",
             "--epochs", "3", "--sentence-weight", "10"],
}

# The classifier that evaluate.py, predict.py and the demo read by default: the best.pt the "imdb" run writes
# (train.py's --out-dir default is runs/stage1_mlp/<dataset>).
CLASSIFIER_CHECKPOINT = "runs/stage1_mlp/imdb/best.pt"
