"""The runs behind every figure this stage publishes, declared once.

A key is the file a run publishes (stage4_transformer/results/<key>.json, and its plots <key>.png); a value is the
command after `python`, from the repo root. The scripts write into runs/ by default and record the key when their
settings are one of these; `python scripts/publish.py <out-dir>/result.json` copies such a file into results/.
"""

REFERENCE_RUNS = {
    # the Transformer translators: a 60- (55-) minute budget on 2 CPU cores, cosine schedule, checkpoint averaging
    "multi30k_en_fr": ["stage4_transformer/train.py", "--dropout", "0.2", "--schedule", "cosine", "--epochs", "30",
                       "--time-budget", "60", "--average-last", "5", "--batch-tokens", "2048", "--lr", "1e-3"],
    "multi30k_de_en": ["stage4_transformer/train.py", "--src", "de", "--tgt", "en", "--dropout", "0.2", "--schedule",
                       "cosine", "--epochs", "30", "--time-budget", "55", "--average-last", "5"],
    # the SST-2 sentence classifier (this stage's encoder, trained from scratch), at its defaults
    "sst2_classifier": ["stage4_transformer/classify.py"],
    # training tokens per second, ours against nn.Transformer, at the default configuration
    "benchmark": ["stage4_transformer/benchmark.py"],
}

# The translator that evaluate.py, translate.py and the demo read by default: where the multi30k_en_fr run writes it
# (its default --out-dir, runs/stage4_transformer/<run_name>; a test checks the two agree).
TRANSLATOR_CHECKPOINT = "runs/stage4_transformer/multi30k_en_fr/best.pt"
