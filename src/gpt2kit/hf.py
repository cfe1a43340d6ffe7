"""Hugging Face GPT-2 <-> gpt2kit: configs, state dicts, loading a HF directory, exporting one.

Our parameter names are Hugging Face's, so conversion is a key-for-key copy. The one twist:
HF's GPT-2 uses `Conv1D`, which stores weights as (in, out) — transposed relative to
`nn.Linear` — for the four projections listed in `CONV1D`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from gpt2kit.errors import UserError
from gpt2kit.model import GPT, GPTConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers that old GPT-2 checkpoints carry (causal masks); they are not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: dict) -> GPTConfig:
    """GPTConfig from a Hugging Face GPT-2 `config.json` dict."""
    if hf.get("model_type") != "gpt2":
        raise UserError(
            f"not a GPT-2 checkpoint: config.json has model_type={hf.get('model_type')!r}; "
            "gpt2kit loads GPT-2 models (model_type 'gpt2') and its own checkpoints"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise UserError(f"unsupported GPT-2 activation_function {act!r}; gpt2kit implements GPT-2's gelu_new")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise UserError("GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported")
    if hf.get("scale_attn_weights", True) is False:
        raise UserError("GPT-2 variants with scale_attn_weights=false are not supported")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        n_inner=hf.get("n_inner"),
        dropout=float(hf.get("resid_pdrop", 0.0)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def config_to_hf(config: GPTConfig, eos_id: int | None = None):
    """A `transformers.GPT2Config` describing the same network (plain GPT-2 configs only)."""
    from transformers import GPT2Config

    if not config.is_plain_gpt2:
        used = [n for n, on in (("rope", config.rope), ("n_kv_head", config.kv_heads != config.n_head),
                                ("sliding_window", config.sliding_window is not None)) if on]
        raise UserError(
            f"this model uses {', '.join(used)}, which transformers' GPT2LMHeadModel cannot express; "
            "only plain GPT-2 models can be exported (use gpt2kit itself to generate and evaluate it)"
        )
    eos = config.vocab_size - 1 if eos_id is None else eos_id
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.n_inner,
        activation_function="gelu_new",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_epsilon,
        tie_word_embeddings=config.tie_embeddings,
        bos_token_id=eos,
        eos_token_id=eos,
        architectures=["GPT2LMHeadModel"],
    )


def state_dict_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2 weights (GPT2LMHeadModel or bare GPT2Model keys) -> gpt2kit names and layout."""
    out = {}
    for key, value in sd.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if not key.startswith(("transformer.", "lm_head.", "score.")):
            key = "transformer." + key  # GPT2Model checkpoints (e.g. OpenAI's original) lack the prefix
        out[key] = value.t().contiguous() if key.endswith(CONV1D) else value
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """gpt2kit weights -> HF GPT2LMHeadModel names and layout (tied lm_head left out, as HF saves it).

    A model trained with `bias=False` becomes the same function in HF form with zero biases.
    """
    out = {}
    for key, value in sd.items():
        if key == "lm_head.weight" and config.tie_embeddings:
            continue
        out[key] = value.t().contiguous() if key.endswith(CONV1D) else value.contiguous()
    if not config.bias:
        for key in list(out):
            if key.endswith(".weight") and (".ln_" in key or ".c_" in key):
                bias_key = key[: -len("weight")] + "bias"
                dim = out[key].shape[-1] if key.endswith(CONV1D) else out[key].shape[0]
                out.setdefault(bias_key, torch.zeros(dim, dtype=out[key].dtype))
    return out


def empty_model(config: GPTConfig, labels: list[str] | None = None) -> GPT:
    """A GPT (a GPTClassifier when `labels` are given) with uninitialised CPU weights (no time spent on
    random init before loading)."""
    from gpt2kit.classify import GPTClassifier

    with torch.device("meta"):
        model = GPT(config) if labels is None else GPTClassifier(config, labels)
    model = model.to_empty(device="cpu")
    if config.tie_embeddings and labels is None:
        model.lm_head.weight = model.transformer.wte.weight
    if model.rotary is not None:  # non-persistent buffer: recompute, it is not in any state dict
        from gpt2kit.model import RotaryEmbedding

        model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
    return model


def load_state(model: GPT, sd: dict[str, torch.Tensor], source: str) -> GPT:
    """Load `sd` strictly, turning shape/key mismatches into one readable UserError."""
    expected = set(model.state_dict())
    if model.config.tie_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise UserError(
            f"weights in {source} do not match the model config "
            f"(missing: {', '.join(missing[:4]) or 'none'}; unexpected: {', '.join(unexpected[:4]) or 'none'})"
        )
    own = model.state_dict()
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise UserError(f"weights in {source} do not match the model config: {k} has shape "
                            f"{tuple(v.shape)}, the config needs {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=False)
    return model


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF-style directory: (sharded) safetensors, else pytorch_model.bin (weights_only)."""
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").exists():
        return load_file(directory / "model.safetensors")
    if index.exists():
        sd = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(directory / shard))
        return sd
    if (directory / "pytorch_model.bin").exists():
        try:
            return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # pickles with code in them are refused here, by design
            raise UserError(f"cannot load {directory / 'pytorch_model.bin'} safely ({type(e).__name__}); "
                            "convert it to safetensors") from None
    raise UserError(f"no weights in {directory} (expected model.safetensors or pytorch_model.bin)")


def load_hf_dir(directory: str | os.PathLike) -> GPT:
    """A gpt2kit GPT from a Hugging Face GPT-2 model directory."""
    directory = Path(directory)
    try:
        hf_config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {directory / 'config.json'}: {e}") from None
    config = config_from_hf(hf_config)
    labels = None
    if "GPT2ForSequenceClassification" in (hf_config.get("architectures") or []):
        id2label = hf_config.get("id2label") or {}
        labels = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]
    model = empty_model(config, labels)
    load_state(model, state_dict_from_hf(read_weights(directory)), str(directory))
    return model.eval()


def export(model: GPT, out: str | os.PathLike, tokenizer=None, overwrite: bool = False,
           source: str | os.PathLike | None = None) -> Path:
    """Write `model` (and `tokenizer`, a gpt2kit Tokenizer) as a Hugging Face GPT-2 directory.

    `transformers.AutoModelForCausalLM.from_pretrained(out)` and `pipeline("text-generation",
    model=out)` load the result. Written to a temporary directory and renamed into place.
    source: where the model came from; `out` may not be it or contain it.
    """
    from safetensors.torch import save_file

    from gpt2kit.atomic import make_temp_dir, replace_dir

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory to export into")
    if source is not None and Path(source).exists():
        a, b = out.resolve(), Path(source).resolve()
        if a == b or a in b.parents:  # replacing `out` would delete the model being exported
            raise UserError(f"--out {out} contains the model source {source}; export into a separate directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    eos_id = getattr(tokenizer, "eos_id", None)
    hf_config = config_to_hf(model.config, eos_id)
    labels = getattr(model, "labels", None)
    if labels is not None:  # a classifier: transformers finds each row's last token as the last non-pad one
        hf_config.architectures = ["GPT2ForSequenceClassification"]
        hf_config.num_labels = len(labels)
        hf_config.id2label = dict(enumerate(labels))
        hf_config.label2id = {name: i for i, name in enumerate(labels)}
        # the pad id the exported tokenizer pads with (EOS when it has none): transformers skips that id to
        # find the last token, so another id would read a pad as the last token of a right-padded row
        pad_id = getattr(tokenizer, "pad_id", None)
        hf_config.pad_token_id = hf_config.eos_token_id if pad_id is None else pad_id
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    sd = state_dict_to_hf(sd, model.config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")
    try:
        hf_config.save_pretrained(tmp)
        save_file(sd, tmp / "model.safetensors", metadata={"format": "pt"})
        if eos_id is not None and labels is None:
            gen = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp, padding_side="left" if labels is not None else None)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
