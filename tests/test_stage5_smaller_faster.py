"""The published figures of docs section 22 (smaller and faster decoding) and of the MFU paragraph of section 25:
each file is the declared run's, its figures clear their baselines (float32, plain decoding, the formula's bounds),
and every figure the docs quote is the file's."""
from __future__ import annotations

import json
import math

import pytest

from scripts.common import REPO_ROOT, reference_command
from stage5_gpt.reference_runs import REFERENCE_RUNS

STAGE = "stage5_gpt"
DOC = REPO_ROOT / "docs" / "stage5_gpt.md"


def published(name: str) -> dict:
    r = json.loads((REPO_ROOT / STAGE / "results" / f"{name}.json").read_text())
    assert r["run"] == name and r["command"] == reference_command(REFERENCE_RUNS[name]), name
    assert (REPO_ROOT / STAGE / "results" / f"{name}.png").exists(), name
    return r


def test_int8_weights_keep_the_perplexity_in_a_quarter_of_the_bytes():
    r = published("quantize")
    rows = r["models"]
    base = rows["float32"]
    for name in ("int8 (ours, fused kernel)", "int8 (ours, dequantize)"):
        assert rows[name]["ppl"] <= 1.02 * base["ppl"], name                 # the +2 % target
        assert rows[name]["bytes"] < 0.3 * base["bytes"], name
    assert rows["int8 (ours, fused kernel)"]["ppl"] == pytest.approx(rows["int8 (ours, dequantize)"]["ppl"], rel=1e-3)
    assert r["logit_error"]["top1_agreement"] > 0.9 and max(r["weight_error"].values()) < 0.02
    assert base["speedup_over_float32"] == 1.0
    if r["cpu_native_bf16"]:
        assert rows["bf16"]["bytes"] < 0.55 * base["bytes"] and rows["bf16"]["ppl"] <= 1.02 * base["ppl"]
    doc = DOC.read_text(encoding="utf-8")
    for name, row in rows.items():
        assert (f"| {name} | {row['ppl']:.2f} | {row['bytes'] / 2**20:.2f} | {row['decode_tokens_per_second']:.1f} | "
                f"{row['speedup_over_float32']:.2f}x |") in doc, name


def test_int4_costs_more_perplexity_than_int8_in_fewer_bytes():
    rows = published("quantize_int4")["models"]
    int8 = rows["int8, per row (quantize.py)"]
    for g in (32, 64):
        int4 = rows[f"int4, groups of {g}"]
        assert int4["bytes"] < int8["bytes"] and int4["ppl"] > int8["ppl"], g
        assert int4["ppl"] < 1.5 * rows["float32"]["ppl"], g                 # damaged, not destroyed
    assert rows["int4, groups of 32"]["ppl"] <= rows["int4, groups of 64"]["ppl"]   # smaller groups win some back


def test_speculative_decoding_gives_the_targets_text_and_its_figures_are_the_docs():
    r = published("speculative")
    assert r["greedy_identical"] and r["draft_params"] < r["target_params"] / 4
    assert r["target"] == "runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt"
    ks = [row for name, row in r["rows"].items() if name != "plain"]
    assert len(ks) == 4 and all(0 < row["acceptance_rate"] <= 1 for row in ks)
    assert all(row["target_passes"] < 128 for row in ks)                   # fewer target passes than tokens
    doc = DOC.read_text(encoding="utf-8")
    for name, row in r["rows"].items():
        if name != "plain":
            assert (f"| {name[2:]} | {row['acceptance_rate']:.2f} | {row['target_passes']} | "
                    f"{row['tokens_per_second']:.1f} | {row['speedup']:.2f}x |") in doc, name
    assert f"plain decoding: {r['rows']['plain']['tokens_per_second']:.1f} tokens/s" in doc


def test_the_size_sweep_grows_and_its_figures_are_the_docs():
    r = published("decode_scaling")
    rows = r["rows"]
    assert [row["params"] for row in rows] == sorted(row["params"] for row in rows)
    assert (rows[0]["layers"], rows[0]["width"]) == (4, 192)                # the WikiText-2 GPT's shape
    assert rows[-1]["target_step_ms"] > 3 * rows[0]["target_step_ms"]       # a larger model costs more per token
    doc = DOC.read_text(encoding="utf-8")
    for row in rows:
        s = row["speedup_over_float32"]
        cells = [f"{row['layers']} x {row['width']}", f"{row['params'] / 1e6:.1f}",
                 f"{row['tokens_per_second']['float32']:.1f}"] + \
                [f"{s[n]:.2f}x" for n in s if n != "float32"] + [f"{row['speculative_best_speedup']:.2f}x"]
        assert "| " + " | ".join(cells) + " |" in doc, cells


def test_mfu_is_a_share_of_the_measured_peak_and_the_docs_quote_it():
    r = published("mfu")
    assert r["compile"] and set(r["precisions"]) >= {"float32", "float32 compiled"}
    for name, p in r["precisions"].items():
        assert 0 < p["mfu"] < 1, name
        assert p["mfu"] == pytest.approx(r["flops_per_token"] * p["train_tokens_per_second"] / (p["peak_gflops"] * 1e9),
                                         rel=2e-3), name
    if r["cpu_native_bf16"]:
        assert r["precisions"]["bf16"]["peak_gflops"] > 1.5 * r["precisions"]["float32"]["peak_gflops"]
    doc = DOC.read_text(encoding="utf-8")
    for name, p in r["precisions"].items():
        assert (f"| {name} | {p['peak_gflops']:.1f} | {p['train_tokens_per_second']:,} | "
                f"{100 * p['mfu']:.1f} % |") in doc, name
    assert not math.isnan(r["flops_per_token"])
