"""The runs behind Stage 2's published figures, declared once.

Each key names the file the run publishes, stage2_rnn_lstm/results/<key>.json (with its plot <key>.png); each value is
the command after `python`, pasted from the repository root. A run writes into its own folder under runs/ (the
script's default --out-dir) and its result file there; `python scripts/publish.py <out-dir>/result.json` copies it
into results/. A script recognises one of these runs by its resolved settings, so flag order or `--lr 0.002` for
`--lr 2e-3` do not matter, and records the run's name and this command in its result file.
"""

REFERENCE_RUNS = {
    "tiny_shakespeare_lstm": ["stage2_rnn_lstm/train.py"],
    "tiny_shakespeare_rnn": ["stage2_rnn_lstm/train.py", "--model-type", "rnn"],
    "wikitext2_lstm": ["stage2_rnn_lstm/train.py", "--dataset", "wikitext2", "--bptt", "35", "--emb-dim", "256",
                       "--hidden-dim", "256", "--tie-weights", "--adaptive-cutoffs", "2000,10000", "--batch-size", "20",
                       "--epochs", "5", "--lr", "3e-3", "--dropout", "0.1"],
    "sst2_lstm": ["stage2_rnn_lstm/classify.py"],
    "benchmark_lstm": ["stage2_rnn_lstm/benchmark.py"],
}

# The checkpoints other scripts read by default (evaluate.py, generate.py and the demo; predict.py and the capstone):
# the best.pt in the folder that the tiny_shakespeare_lstm and sst2_lstm runs write (a test checks that they chain).
LM_CHECKPOINT = "runs/stage2_rnn_lstm/tiny_shakespeare_lstm/best.pt"
CLASSIFIER_CHECKPOINT = "runs/stage2_rnn_lstm/sst2_classifier/best.pt"
