"""gpt2kit: train GPT-2 - pretrain, fine-tune, tokenizers, generate, evaluate, export."""

__version__ = "0.1.0"

__all__ = ["GPT", "GPTConfig", "model_size", "__version__"]


def __getattr__(name: str):
    # Lazy (PEP 562): `gpt2kit --help` and the CLI's start-up must not pay for importing torch.
    if name in ("GPT", "GPTConfig", "model_size"):
        from gpt2kit import model

        return getattr(model, name)
    raise AttributeError(f"module 'gpt2kit' has no attribute {name!r}")
