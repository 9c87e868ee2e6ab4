"""Stage 5 decode_scaling.py: decoding speed per weight format and speculative decoding's cost ratios, per model size
(the published figures are checked in test_stage5_smaller_faster.py once they exist)."""
from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, cli
from stage5_gpt import decode_scaling


def test_it_measures_every_size_and_format_and_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "ds.json"
    decode_scaling.main(["--sizes", "1x64", "2x128", "--vocab-size", "300", "--new-tokens", "4", "--rounds", "1",
                         "--prompt-tokens", "4", "--k", "2", "--json", str(out)])
    r = json.loads(out.read_text())
    assert [(row["layers"], row["width"]) for row in r["rows"]] == [(1, 64), (2, 128)]
    assert r["rows"][0]["params"] < r["rows"][1]["params"]
    for row in r["rows"]:
        assert {"float32", "int8 (ours, fused kernel)", "int8 (torch.ao dynamic)"} <= set(row["tokens_per_second"])
        assert row["speedup_over_float32"]["float32"] == 1.0
        assert all(v > 0 for v in row["tokens_per_second"].values())
        best = 3 * row["target_step_ms"] / (2 * row["draft_step_ms"] + row["target_check_ms"])   # (k+1) / (k + 1)
        assert row["speculative_best_speedup"] == pytest.approx(best, rel=0.01)
    assert "run" not in r and r["command"].startswith("python stage5_gpt/decode_scaling.py")
    assert out.with_suffix(".png").stat().st_size > 0
    assert "speculative at best" in capsys.readouterr().out


@pytest.mark.parametrize("bad, message", [(["--sizes", "4by192"], "LAYERSxWIDTH"),
                                          (["--sizes", "2x100"], "multiple of 64"),
                                          (["--sizes", "1x64", "1x64"], "twice"),
                                          (["--draft-embd", "48"], "multiple of 32")])
def test_bad_sizes_get_one_line(bad, message, capsys, tmp_path):
    code, err = cli(decode_scaling.main, [*bad, "--json", str(tmp_path / "x.json")], capsys)
    assert_one_line_error(code, err, message)
