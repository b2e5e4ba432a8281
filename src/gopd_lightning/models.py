"""Loading, freezing and checking the student, teacher and reference models.

A model is named by a path or hub id (``Qwen/Qwen3-4B``) or by a toy-world name (``toy:base``),
which prepares the offline toy world on first use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

TOY_PREFIX = "toy:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str) -> str:
    """A local directory or hub id for ``name``; ``toy:<model>`` prepares the toy world if needed.

    A name that can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, or ``a/b`` where the folder
    ``a`` exists here) must exist; so must every name when the hub is offline (``HF_HUB_OFFLINE``)
    and it is not in the hub cache. Both fail at once, naming the path, instead of after the hub's retries.
    """
    if name.startswith(TOY_PREFIX):
        from gopd_lightning.toy.world import toy_model_path

        return str(toy_model_path(name[len(TOY_PREFIX) :]))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"model {name!r} is a file, not a model folder (one with config.json and the weights)")
    if _looks_like_a_path(name):
        raise ValueError(f"no model folder at {name!r} (resolved to {path.resolve()}); check the path")
    if hub_constants.HF_HUB_OFFLINE and not _in_hub_cache(name):
        raise ValueError(
            f"model {name!r} is neither a local folder nor in the hub cache, and the hub is offline (HF_HUB_OFFLINE)"
        )
    return name


def _looks_like_a_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def _in_hub_cache(repo_id: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id either
        return False


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name``, padding on the left (prompts) and with a pad token set."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    tokenizer.padding_side = "left"
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {name!r} has no EOS token; responses could never end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer of {name!r} has no chat template; prompts are chat messages")
    return tokenizer


def load_causal_lm(name: str, dtype: str = "float32") -> PreTrainedModel:
    """A causal LM from ``name`` in ``dtype`` (one of float32, bfloat16, float16)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=DTYPES[dtype])


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with no parameter requiring a gradient."""
    model.eval()
    model.requires_grad_(False)
    return model


def check_same_vocabulary(student: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, other_name: str) -> None:
    """Raise unless ``other`` maps every token to the same id as the student's tokenizer.

    Teachers and the reference score the student's token ids, so one id must mean one token
    for all of them; embedding matrices may be padded differently, tokenizers may not.
    """
    mine, theirs = student.get_vocab(), other.get_vocab()
    if mine == theirs:
        return
    differing = sorted(t for t in mine.keys() | theirs.keys() if mine.get(t) != theirs.get(t))
    raise ValueError(
        f"{other_name} does not share the student's vocabulary: {len(differing)} of "
        f"{len(mine.keys() | theirs.keys())} tokens differ (e.g. {differing[:5]}); G-OPD scores the "
        "student's token ids with every model, so all must use the same tokenizer"
    )


def check_vocabulary_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Raise if ``model`` has fewer output logits than ``tokenizer`` has tokens."""
    logits = model.get_output_embeddings().weight.shape[0]
    if logits < len(tokenizer):
        raise ValueError(f"{name} has {logits} output logits but its tokenizer has {len(tokenizer)} tokens")
