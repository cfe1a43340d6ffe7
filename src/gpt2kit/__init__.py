"""gpt2kit: train GPT-2 - pretrain, fine-tune, tokenizers, generate, evaluate, export."""

__version__ = "0.1.0"

from gpt2kit.model import GPT, GPTConfig, model_size  # noqa: E402

__all__ = ["GPT", "GPTConfig", "model_size", "__version__"]
