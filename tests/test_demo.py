import json

from gpt2kit.cli import main


def test_demo_end_to_end_at_tiny_size(tmp_path, capsys):
    """The `make demo` code path, seconds-sized: tokenizer, data, training, eval, completions, export."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--max-steps", "12", "--preset", "tiny", "--vocab-size", "400",
            "--limit", "40", "--block-size", "64", "--batch-size", "4", "--max-new-tokens", "8"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "perplexity" in cap.err and "summary" in cap.err
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
