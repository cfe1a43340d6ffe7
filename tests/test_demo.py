import json
import re

import pytest

from gpt2kit.cli import main


def test_demo_end_to_end_at_tiny_size(tmp_path, capsys):
    """The `make demo` code path, seconds-sized: tokenizer, data, training, eval, completions, export."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--max-steps", "12", "--preset", "tiny", "--vocab-size", "400",
            "--limit", "40", "--block-size", "64", "--batch-size", "4", "--max-new-tokens", "8"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "perplexity" in cap.err and "summary" in cap.err
    assert re.search(r"parses +\d+ of \d+ completions of held-out function signatures", cap.err)
    assert cap.out.count("----- ") == 4  # three completions + the transformers pipeline one
    assert "def fibonacci(n):" in cap.out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "hf")
    tok = AutoTokenizer.from_pretrained(out / "hf")
    assert model.config.vocab_size == len(tok) == 400
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and "val_ppl" in rows[-1]
    assert (out / "run" / "loss.png").stat().st_size > 1000

    # re-running reuses the tokenizer and the prepared data
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "tokenizer: reusing" in err
    assert len(list((out / "data").iterdir())) == 1


@pytest.mark.parametrize("completion, ok", [
    ("\n    return n\n\ndef other():\n", True),                 # ends at the dedent
    ("\n    if n < 2:\n        return n\n    return fib(", True),  # token budget cut: complete lines judged
    ("\n    return n +\nx = 1\n", False),                         # a body that does not parse
    ("\n\nclass A:\n    pass\n", False),                          # no body before the dedent
    (" return n\n", True),                                           # a one-line body after the colon
    ("\n    x = (\n", False),                                       # only a cut line
    ("\n        return n\n    def other(self):\n", True),           # a method's body, then the next method
    ("\n        return (n\n    def other(self):\n", False),         # the same, broken
])
def test_completion_parse_check(completion, ok):
    from gpt2kit.demo import parses

    assert parses("def fib(n):", completion) is ok


def test_held_out_signatures_come_from_the_validation_split(prepared_dir, small_tokenizer):
    import numpy as np

    from gpt2kit.demo import held_out_signatures
    from gpt2kit.prepare import load_split

    sigs = held_out_signatures(prepared_dir, small_tokenizer, n=5)
    assert len(sigs) == 5 and all(s.startswith("def ") and s.endswith(":") for s in sigs)
    val_text = small_tokenizer.decode(np.concatenate(load_split(prepared_dir, "val")).tolist())
    assert all(s in val_text for s in sigs)
