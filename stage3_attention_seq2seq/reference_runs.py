"""The runs behind Stage 3's published figures, declared once.

Each entry is a result file's name -> the command (after `python`, from the repo root) that produces it:
`stage3_attention_seq2seq/results/<name>.json`, with its curves `<name>.png` beside it. The name is also the folder
the run writes into (train.py's --out-dir default, runs/stage3_attention_seq2seq/<name>);
`python scripts/publish.py <out-dir>/result.json` copies a reference run's result into stage3_attention_seq2seq/results/.
The README tables, the demo and scripts/reproduce.py read this dict.
"""

REFERENCE_RUNS = {
    "multi30k_en_fr": ["stage3_attention_seq2seq/train.py", "--epochs", "8"],
    "multi30k_de_en": ["stage3_attention_seq2seq/train.py", "--src", "de", "--tgt", "en", "--epochs", "8"],
    "multi30k_en_fr_noattn": ["stage3_attention_seq2seq/train.py", "--attention", "none", "--epochs", "8"],
}

# The translator that evaluate.py, translate.py and the demo read by default: the best.pt the "multi30k_en_fr" run
# writes.
TRANSLATOR_CHECKPOINT = "runs/stage3_attention_seq2seq/multi30k_en_fr/best.pt"
