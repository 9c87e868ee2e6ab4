"""The runs behind Stage 6's published figures, declared once: run name -> the command after `python`.

The name is the file the run publishes, stage6_bert/results/<name>.json (and its plot <name>.png). A script that
finishes with one of these configurations records the name and this command in its result file; copy it into
results/ with `python scripts/publish.py <out-dir>/result.json`. Where-flags (--out-dir, --result, --data-dir,
--device) are left out: each run writes to its default --out-dir, runs/stage6_bert/<name>. Where that default would
be another run's folder (a search's winner differs from the hand recipe only in its pooling), --out-dir names the
run's own, runs/stage6_bert/<name>.

The fine-tunes read the checkpoint the pre-training run writes: BERT_CHECKPOINT is finetune.py's default
--checkpoint, and the demo and the capstone read it too. MINILM_SST2_CHECKPOINT is where real pre-trained weights
fine-tuned on SST-2 land (`finetune.py --task sst2 --pretrained all-MiniLM-L6-v2`, any learning rate or epochs; only
another --seed or --out-dir moves it): the demo's sentiment box prefers it to the course's own model when it exists.
"""

# the flags every fine-tune of the real pre-trained weights shares (the epochs depend on the task's size)
MINILM = ["--pretrained", "all-MiniLM-L6-v2", "--pooling", "mean", "--lr", "5e-5"]
# the searches' winners (REFERENCE_SWEEPS below): CoLA's is lr 5e-5 with [CLS] pooling
COLA_TUNED = ["stage6_bert/finetune.py", "--task", "cola", "--pretrained", "all-MiniLM-L6-v2", "--pooling", "cls",
              "--lr", "5e-5", "--epochs", "5"]
# ... MRPC's: lr 2e-4 with mean pooling
MRPC_TUNED = ["stage6_bert/finetune.py", "--task", "mrpc", "--pretrained", "all-MiniLM-L6-v2", "--pooling", "mean",
              "--lr", "2e-4", "--epochs", "5"]
# ... RTE's: lr 1e-4 with mean pooling
RTE_TUNED = ["stage6_bert/finetune.py", "--task", "rte", "--pretrained", "all-MiniLM-L6-v2", "--pooling", "mean",
             "--lr", "1e-4", "--epochs", "5"]

REFERENCE_RUNS = {
    "pretrain": ["stage6_bert/pretrain.py", "--layers", "4", "--hidden", "128", "--heads", "2", "--max-len", "64",
                 "--batch-size", "64", "--lr", "2e-3", "--norm", "pre", "--dropout", "0", "--epochs", "10",
                 "--time-budget", "60", "--eval-interval", "2000", "--cpu-bf16"],
    "glue_sst2": ["stage6_bert/finetune.py", "--task", "sst2", "--lr", "4e-4", "--epochs", "4"],
    "glue_sst2_scratch": ["stage6_bert/finetune.py", "--task", "sst2", "--from-scratch", "--lr", "1e-4"],
    "glue_cola": ["stage6_bert/finetune.py", "--task", "cola"],
    "glue_mrpc": ["stage6_bert/finetune.py", "--task", "mrpc"],
    "glue_rte": ["stage6_bert/finetune.py", "--task", "rte"],
    "glue_stsb": ["stage6_bert/finetune.py", "--task", "stsb"],
    "glue_wnli": ["stage6_bert/finetune.py", "--task", "wnli"],
    "glue_baselines": ["stage6_bert/baselines.py"],     # the constant predictor on every task's dev set: no training
    # real pre-trained weights (data/pretrained/all-MiniLM-L6-v2): zero-shot sentence similarity, no training
    "stsb_zero_shot_minilm": ["stage6_bert/similarity.py"],
    # ... fine-tuned on each task; RTE, MRPC and CoLA, whose dev sets are small, are reported as the mean of three seeds
    "glue_sst2_minilm": ["stage6_bert/finetune.py", "--task", "sst2", *MINILM, "--epochs", "2"],
    "glue_stsb_minilm": ["stage6_bert/finetune.py", "--task", "stsb", *MINILM, "--epochs", "5"],
    # STS-B again as a bi-encoder (each sentence alone, cosine of the mean-pooled vectors): Sentence-BERT's recipe
    "glue_stsb_minilm_bi": ["stage6_bert/finetune.py", "--task", "stsb", "--pretrained", "all-MiniLM-L6-v2",
                            "--pair-encoding", "bi", "--lr", "2e-5", "--batch-size", "16", "--epochs", "4"],
    "glue_wnli_minilm": ["stage6_bert/finetune.py", "--task", "wnli", *MINILM, "--epochs", "5"],
    "glue_mrpc_minilm": ["stage6_bert/finetune.py", "--task", "mrpc", *MINILM, "--epochs", "5"],
    "glue_mrpc_minilm_seed2": ["stage6_bert/finetune.py", "--task", "mrpc", *MINILM, "--epochs", "5", "--seed", "2"],
    "glue_mrpc_minilm_seed3": ["stage6_bert/finetune.py", "--task", "mrpc", *MINILM, "--epochs", "5", "--seed", "3"],
    "glue_cola_minilm": ["stage6_bert/finetune.py", "--task", "cola", *MINILM, "--epochs", "5"],
    "glue_cola_minilm_seed2": ["stage6_bert/finetune.py", "--task", "cola", *MINILM, "--epochs", "5", "--seed", "2"],
    "glue_cola_minilm_seed3": ["stage6_bert/finetune.py", "--task", "cola", *MINILM, "--epochs", "5", "--seed", "3"],
    "glue_rte_minilm": ["stage6_bert/finetune.py", "--task", "rte", *MINILM, "--epochs", "5"],
    "glue_rte_minilm_seed2": ["stage6_bert/finetune.py", "--task", "rte", *MINILM, "--epochs", "5", "--seed", "2"],
    "glue_rte_minilm_seed3": ["stage6_bert/finetune.py", "--task", "rte", *MINILM, "--epochs", "5", "--seed", "3"],
    # each search's winner (REFERENCE_SWEEPS below), trained again with three seeds and scored on dev; its own
    # --out-dir, since only the pooling tells it from the recipe above
    "glue_cola_minilm_tuned": [*COLA_TUNED, "--out-dir", "runs/stage6_bert/glue_cola_minilm_tuned"],
    "glue_cola_minilm_tuned_seed2": [*COLA_TUNED, "--seed", "2",
                                     "--out-dir", "runs/stage6_bert/glue_cola_minilm_tuned_seed2"],
    "glue_cola_minilm_tuned_seed3": [*COLA_TUNED, "--seed", "3",
                                     "--out-dir", "runs/stage6_bert/glue_cola_minilm_tuned_seed3"],
    "glue_mrpc_minilm_tuned": [*MRPC_TUNED, "--out-dir", "runs/stage6_bert/glue_mrpc_minilm_tuned"],
    "glue_mrpc_minilm_tuned_seed2": [*MRPC_TUNED, "--seed", "2",
                                     "--out-dir", "runs/stage6_bert/glue_mrpc_minilm_tuned_seed2"],
    "glue_mrpc_minilm_tuned_seed3": [*MRPC_TUNED, "--seed", "3",
                                     "--out-dir", "runs/stage6_bert/glue_mrpc_minilm_tuned_seed3"],
    "glue_rte_minilm_tuned": [*RTE_TUNED, "--out-dir", "runs/stage6_bert/glue_rte_minilm_tuned"],
    "glue_rte_minilm_tuned_seed2": [*RTE_TUNED, "--seed", "2",
                                    "--out-dir", "runs/stage6_bert/glue_rte_minilm_tuned_seed2"],
    "glue_rte_minilm_tuned_seed3": [*RTE_TUNED, "--seed", "3",
                                    "--out-dir", "runs/stage6_bert/glue_rte_minilm_tuned_seed3"],
}

# The searches behind the real weights' recipes, declared the same way: a search's name -> its command (after
# `python`); `python scripts/publish.py runs/sweeps/<name>/sweep.json` copies its summary and plots into
# stage6_bert/results/sweeps/<name>/. Each tries every learning rate with both poolings on one task, selecting on the
# validation split finetune.py carves from train: dev, which the README reports, is never read while choosing.
REFERENCE_SWEEPS = {
    "glue_cola_minilm_grid": ["scripts/sweep.py", "stage6_bert/finetune.py", "--name", "glue_cola_minilm_grid",
                              "--objective", "val.matthews_corr", "--direction", "maximize", "--sampler", "grid",
                              "--param", "lr=choice:5e-5,1e-4,2e-4", "--param", "pooling=choice:cls,mean",
                              "--", "--task", "cola", "--pretrained", "all-MiniLM-L6-v2", "--epochs", "5"],
    "glue_mrpc_minilm_grid": ["scripts/sweep.py", "stage6_bert/finetune.py", "--name", "glue_mrpc_minilm_grid",
                              "--objective", "val.f1", "--direction", "maximize", "--sampler", "grid",
                              "--param", "lr=choice:5e-5,1e-4,2e-4", "--param", "pooling=choice:cls,mean",
                              "--", "--task", "mrpc", "--pretrained", "all-MiniLM-L6-v2", "--epochs", "5"],
    "glue_rte_minilm_grid": ["scripts/sweep.py", "stage6_bert/finetune.py", "--name", "glue_rte_minilm_grid",
                             "--objective", "val.accuracy", "--direction", "maximize", "--sampler", "grid",
                             "--param", "lr=choice:5e-5,1e-4,2e-4", "--param", "pooling=choice:cls,mean",
                             "--", "--task", "rte", "--pretrained", "all-MiniLM-L6-v2", "--epochs", "5"],
}

# How a search is checked: its winner and the recipe it set out to beat, each trained again with three seeds and scored
# on dev; the README's sweep section shows each group's mean (the runs above).
SWEEP_CHECKS = {
    "glue_cola_minilm_grid": {"hand recipe (lr 5e-5, mean pooling)":
                                  ["glue_cola_minilm", "glue_cola_minilm_seed2", "glue_cola_minilm_seed3"],
                              "search winner (lr 5e-5, [CLS] pooling)":
                                  ["glue_cola_minilm_tuned", "glue_cola_minilm_tuned_seed2",
                                   "glue_cola_minilm_tuned_seed3"]},
    "glue_mrpc_minilm_grid": {"hand recipe (lr 5e-5, mean pooling)":
                                  ["glue_mrpc_minilm", "glue_mrpc_minilm_seed2", "glue_mrpc_minilm_seed3"],
                              "search winner (lr 2e-4, mean pooling)":
                                  ["glue_mrpc_minilm_tuned", "glue_mrpc_minilm_tuned_seed2",
                                   "glue_mrpc_minilm_tuned_seed3"]},
    "glue_rte_minilm_grid": {"hand recipe (lr 5e-5, mean pooling)":
                                 ["glue_rte_minilm", "glue_rte_minilm_seed2", "glue_rte_minilm_seed3"],
                             "search winner (lr 1e-4, mean pooling)":
                                 ["glue_rte_minilm_tuned", "glue_rte_minilm_tuned_seed2",
                                  "glue_rte_minilm_tuned_seed3"]},
}

# The folder the "pretrain" run writes (pretrain.py's default --out-dir, runs/stage6_bert/<run name>), + best.pt.
BERT_CHECKPOINT = "runs/stage6_bert/pretrain/best.pt"
# Where `finetune.py --task sst2 --pretrained all-MiniLM-L6-v2` writes (its default --out-dir, + best.pt).
MINILM_SST2_CHECKPOINT = "runs/stage6_bert/glue_sst2_minilm/best.pt"

# Which sentence-pair objective prepares the pair tasks better (docs section 11): two short runs with equal budgets,
# 128 positions, half the examples two-segment pairs (the other half packed text, as "pretrain"), same model, same
# tokens per step as "pretrain" (32 x 128 = 64 x 64): next-sentence prediction (BERT) against sentence-order
# prediction (ALBERT). Their own --out-dir, since the full-length run of the chosen objective takes the default one.
PAIR_SHORT = ["stage6_bert/pretrain.py", "--layers", "4", "--hidden", "128", "--heads", "2", "--max-len", "128",
              "--batch-size", "32", "--lr", "2e-3", "--norm", "pre", "--dropout", "0", "--epochs", "10",
              "--time-budget", "15", "--eval-interval", "500", "--cpu-bf16", "--pair-share", "0.5"]
REFERENCE_RUNS["pretrain_nsp_short"] = [*PAIR_SHORT, "--nsp", "--out-dir", "runs/stage6_bert/pretrain_nsp_short"]
REFERENCE_RUNS["pretrain_sop_short"] = [*PAIR_SHORT, "--sop", "--out-dir", "runs/stage6_bert/pretrain_sop_short"]

# The full pair-aware pre-training with the objective the short runs chose (next-sentence prediction): the same
# model, 128 positions and mix as the short runs, the 60-minute budget of "pretrain". The pair tasks fine-tune from it.
REFERENCE_RUNS["pretrain_pairs"] = [
    "stage6_bert/pretrain.py", "--layers", "4", "--hidden", "128", "--heads", "2", "--max-len", "128",
    "--batch-size", "32", "--lr", "2e-3", "--norm", "pre", "--dropout", "0", "--epochs", "10", "--time-budget", "60",
    "--eval-interval", "2000", "--cpu-bf16", "--pair-share", "0.5", "--nsp", "--out-dir", "runs/stage6_bert/pretrain_pairs"]
# At --lr 2e-3 that run stayed on the word-frequency plateau (docs section 11), so the run the pair tasks fine-tune from
# is the same at half the learning rate.
REFERENCE_RUNS["pretrain_pairs_lr1e3"] = [
    "stage6_bert/pretrain.py", "--layers", "4", "--hidden", "128", "--heads", "2", "--max-len", "128",
    "--batch-size", "32", "--lr", "1e-3", "--norm", "pre", "--dropout", "0", "--epochs", "10", "--time-budget", "60",
    "--eval-interval", "2000", "--cpu-bf16", "--pair-share", "0.5", "--nsp",
    "--out-dir", "runs/stage6_bert/pretrain_pairs_lr1e3"]
PAIRS_CHECKPOINT = "runs/stage6_bert/pretrain_pairs_lr1e3/best.pt"

# Every task fine-tuned from it with finetune.py's default recipe (SST-2 with the recipe of "glue_sst2"), and the same
# network from random weights with the same recipe: the GLUE table's columns "pre-trained here with sentence pairs"
# and "random weights" beside it. RTE, MRPC and CoLA, whose dev sets are small, with three seeds each.
def pair_runs() -> dict[str, list[str]]:
    runs = {}
    for task, recipe in [("sst2", ["--lr", "4e-4", "--epochs", "4"]), ("cola", []), ("mrpc", []), ("rte", []),
                         ("stsb", []), ("wnli", [])]:
        for kind, start in [("pairs", []), ("pairs_scratch", ["--from-scratch"])]:
            for seed in ([None, 2, 3] if task in ("cola", "mrpc", "rte") else [None]):
                name = f"glue_{task}_{kind}" + (f"_seed{seed}" if seed else "")
                runs[name] = ["stage6_bert/finetune.py", "--task", task, *recipe, *start,
                              "--checkpoint", PAIRS_CHECKPOINT, *(["--seed", str(seed)] if seed else []),
                              "--out-dir", f"runs/stage6_bert/{name}"]
    return runs


REFERENCE_RUNS.update(pair_runs())
