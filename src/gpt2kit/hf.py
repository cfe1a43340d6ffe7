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


def config_to_hf(config: GPTConfig, eos_id: int | None = None, pad_id: int | None = None):
    """A `transformers.GPT2Config` describing the same network (plain GPT-2 configs only).

    eos_id (also BOS, as in GPT-2) defaults to the last id; pad_id to eos_id: batched pipelines pad with it."""
    from transformers import GPT2Config

    if not config.is_plain_gpt2:
        raise UserError(
            f"this model uses {', '.join(config.non_gpt2_features())}, which transformers' GPT2LMHeadModel cannot express; "
            "only plain GPT-2 models can be exported (use gpt2kit itself to generate and evaluate it)"
        )
    eos = config.vocab_size - 1 if eos_id is None else eos_id
    pad = eos if pad_id is None else pad_id
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
        pad_token_id=pad,
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
    from gpt2kit.memory import check_fits, human

    with torch.device("meta"):
        model = GPT(config) if labels is None else GPTClassifier(config, labels)
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    short = check_fits(need, "cpu")  # a damaged or hostile config.json must not reach the allocator
    if short is not None:
        raise UserError(f"the model's config ({config.n_layer} layers, n_embd {config.n_embd}, vocab "
                        f"{config.vocab_size}, context {config.block_size}) needs {human(need)} for its weights but "
                        f"{human(short[0])} is {short[1]}; check its config.json")
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


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one .safetensors file; a damaged or foreign file is one UserError, not a traceback."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise UserError(f"cannot read {path} ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}); "
                        "it is damaged or not a safetensors file - restore or re-download it") from None


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF-style directory: (sharded) safetensors, else pytorch_model.bin (weights_only)."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").exists():
        return load_safetensors(directory / "model.safetensors")
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a readable safetensors index (no weight_map); restore or "
                            "re-download the model") from None
        sd = {}
        for shard in shards:
            sd.update(load_safetensors(directory / str(shard)))
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


def generation_defaults(config: GPTConfig, eos_id: int, pad_id: int) -> dict:
    """generation_config.json of an exported language model.

    Sampling as `gpt2kit generate` does by default (temperature 0.8, no top-k/top-p cut: transformers would
    otherwise apply top_k=50), so the same model sounds the same in both. max_new_tokens: gpt2kit's 128, but
    at most half the context, because transformers' GPT-2 cannot slide past n_positions the way gpt2kit
    does (pipeline's own default of 256 would overflow a small model's context even on a short prompt)."""
    return {
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": max(1, min(128, config.block_size // 2)),
    }


def _chmod_tree(directory: Path) -> None:
    """Plain files 0666 & ~umask (safetensors and mkstemp-style writers leave 0600, which other users and
    tools sharing the export, e.g. a serving container, cannot read)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in directory.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)
        elif p.is_dir():
            os.chmod(p, 0o777 & ~umask)


def export(model: GPT, out: str | os.PathLike, tokenizer=None, overwrite: bool = False,
           source: str | os.PathLike | None = None, *, license: str | None = None,
           repo_id: str | None = None) -> Path:
    """Write `model` (and `tokenizer`, a gpt2kit Tokenizer) as a Hugging Face GPT-2 directory with a model card.

    `transformers.AutoModelForCausalLM.from_pretrained(out)` and `pipeline("text-generation", model=out)`
    (a classifier: `AutoModelForSequenceClassification`, `pipeline("text-classification")`) load the result.
    The tokenizer pads on the left with its pad token (EOS when it has none) and knows the model's context
    length. README.md is a Hub model card holding the facts of the run `source` came from (see
    gpt2kit.modelcard); license (default: the source's, else "mit") and repo_id (used in its snippets) go
    into it. Written to a temporary directory and renamed into place.
    source: where the model came from; `out` may not be it or contain it.
    """
    from safetensors.torch import save_file

    from gpt2kit.atomic import make_temp_dir, replace_dir
    from gpt2kit.modelcard import gather_facts, model_card

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
    # the pad id the exported tokenizer pads with (EOS when it has none): a classifier skips that id to find
    # each row's last token, so another id would read a pad as the last token of a right-padded row
    pad_id = getattr(tokenizer, "pad_id", None)
    hf_config = config_to_hf(model.config, eos_id, pad_id)
    labels = getattr(model, "labels", None)
    facts = gather_facts(source, tokenizer)
    if labels is not None:  # a classifier: transformers finds each row's last token as the last non-pad one
        hf_config.architectures = ["GPT2ForSequenceClassification"]
        hf_config.num_labels = len(labels)
        hf_config.id2label = dict(enumerate(labels))
        hf_config.label2id = {name: i for i, name in enumerate(labels)}
    # which end of a too-long text `truncation=True` drops: the start (what a classifier's last token and a
    # continuation need least), unless the classifier was trained keeping the start
    truncation_side = "left"
    if labels is not None and facts.config is not None:
        truncation_side = facts.config.data.truncation_side
    card = model_card(model, tokenizer, facts, out=out, license=license, repo_id=repo_id)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    sd = state_dict_to_hf(sd, model.config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")
    try:
        hf_config.save_pretrained(tmp)
        save_file(sd, tmp / "model.safetensors", metadata={"format": "pt"})
        if eos_id is not None and labels is None:
            gen = generation_defaults(model.config, eos_id, hf_config.pad_token_id)
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp, padding_side="left", model_max_length=model.config.block_size,
                           truncation_side=truncation_side)
        (tmp / "README.md").write_text(card.text, encoding="utf-8")
        for name, path in card.files.items():
            shutil.copyfile(path, tmp / name)
        _chmod_tree(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_repo_id(repo_id: str) -> str:
    """`ORG/NAME` (or `NAME`, the token owner's namespace) as the Hub accepts it, else a UserError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--push-to-hub {repo_id!r} is not a Hub repository id ({str(e).splitlines()[0]}); "
                        "use ORG/NAME") from None
    if repo_id.count("/") > 1:
        raise UserError(f"--push-to-hub {repo_id!r} is not a Hub repository id; use ORG/NAME")
    return repo_id


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").strip().lower() in ("1", "on", "yes", "true")
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _push_failure(e: BaseException) -> str:
    """Why a push failed, in a few words a user can act on."""
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, HfHubHTTPError) and status is not None:
        server = getattr(e, "server_message", None) or str(e).splitlines()[0]
        if status == 401:
            return f"the Hub refused the token (401: {server[:160]}); log in again with `hf auth login` or set HF_TOKEN"
        if status == 403:
            return f"the token may not write there (403: {server[:160]}); use a write token or a namespace you own"
        return f"the Hub answered {status} ({server[:160]})"
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"OfflineModeIsEnabled"}:
        return "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
    if names & {"ConnectError", "ConnectionError", "TransportError", "Timeout", "TimeoutException", "NetworkError"}:
        detail = str(e).splitlines()[0][:160] if str(e) else ""
        return f"cannot reach the Hugging Face Hub ({type(e).__name__}{': ' + detail if detail else ''})"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no details'}"


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = True, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None) -> str:
    """Upload the export `folder` to the Hub model repository `repo_id`; returns the commit's URL.

    Creates the repository if needed (private unless `private=False`; an existing one keeps its visibility)
    and the branch `revision`. The commit makes the revision hold exactly the folder's files: files of an
    earlier export that this one lacks are deleted (a stale adapter_config.json or weight shard would change
    what transformers loads); .gitattributes stays. Token: `token`, else HF_TOKEN / `hf auth login`'s.
    Failures are one UserError that says why and that the folder is complete."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    check_repo_id(repo_id)
    retry = f"the export in {folder} is complete; push it later with `hf upload{' --private' if private else ''} " \
            f"{repo_id} {folder}`"
    if _hub_offline():
        raise UserError(f"cannot push to {repo_id}: the Hugging Face Hub is offline (HF_HUB_OFFLINE=1); {retry}")
    token = token or get_token()
    if not token:
        raise UserError(f"cannot push to {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN "
                        f"(a write token); {retry}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {folder.name} (gpt2kit export)",
                                 delete_patterns="*")
    except Exception as e:  # network, auth, server: all end the same way, with the export kept
        raise UserError(f"cannot push to {repo_id}: {_push_failure(e)}; {retry}") from None
    return str(getattr(info, "commit_url", info))
