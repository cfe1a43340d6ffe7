"""Load (issue 11, reliability 12): one batch of 64 prompts of very different lengths - from a single token to
past the context - decodes each prompt exactly as it decodes alone (greedy), with none lost or reordered.
(prepare on 50,000 tiny files and on one huge line: tests/reliability/test_prepare_limits.py and
docs/BENCHMARKS.md.)"""

from __future__ import annotations

import random

import torch

from gpt2kit.generate import generate_text
from gpt2kit.model import GPT, GPTConfig


def test_64_prompts_of_very_different_lengths_in_one_batch(corpus_dir, small_tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=small_tokenizer.vocab_size, block_size=64)).eval()
    text = (corpus_dir / "textwrap.py").read_text()
    ids = small_tokenizer.encode(text)
    rng = random.Random(0)
    # lengths from 1 token to twice the context (the model then reads the last 64 tokens), shuffled
    lengths = [1, 2, 3, 5, 63, 64, 65, 127] + [rng.randint(1, 128) for _ in range(56)]
    rng.shuffle(lengths)
    starts = [rng.randint(0, len(ids) - 200) for _ in lengths]
    prompts = [small_tokenizer.decode(ids[s : s + n]) for s, n in zip(starts, lengths)]
    prompts = [p if small_tokenizer.encode(p) else "x" for p in prompts]  # a decoded piece may be empty

    together = generate_text(model, small_tokenizer, prompts, 12, temperature=0, batch_size=64, prompt_lookup=0)
    assert len(together) == 64
    for i in range(64):
        alone = generate_text(model, small_tokenizer, [prompts[i]], 12, temperature=0, batch_size=1, prompt_lookup=0)
        assert together[i].text == alone[0].text, (i, lengths[i])
