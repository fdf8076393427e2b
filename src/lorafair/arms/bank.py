"""Arms as models: wrap a base model for an arm (PEFT LoRA / full / base), save and load the result.

`ArmBank` is the one place where arms are swapped in for evaluation: the base model is loaded once,
LoRA adapters are attached to it by name, and the full arm is a second model loaded once. Base and
plain/rsLoRA adapters can also share one forward pass, each row with its own adapter (PEFT's
`adapter_names`): `mixable` says which, `logits_many` runs them. Every arm runs in the dtype of the
base it was given (bf16 or float32, see `models.precision`); logits come back float32; adapter
weights stay float32 (PEFT upcasts them on load).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from lorafair.arms.kinds import is_full, is_lora, lora_settings, variant_of
from lorafair.arms.names import adapter_key
from lorafair.models import precision
from lorafair.study.config import Arm
from lorafair.errors import UserError


def linear_names(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Short names of the model's Linear layers (e.g. q_proj) -> (out_features, in_features)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not name.endswith("lm_head"):
            out.setdefault(name.rsplit(".", 1)[-1], (mod.out_features, mod.in_features))
    return out


def check_arm(model: nn.Module, arm: Arm) -> None:
    if not is_lora(arm):
        return
    shapes = linear_names(model)
    for t in arm.target_modules:
        if t not in shapes:
            raise UserError(
                f"arm {arm.name}: target module {t!r} is not in this model; valid: {', '.join(sorted(shapes))}"
            )
        limit = min(shapes[t])
        if arm.rank > limit:
            raise UserError(
                f"arm {arm.name}: rank {arm.rank} exceeds what {t} ({shapes[t][0]}x{shapes[t][1]}) allows "
                f"(at most {limit}); lower the rank"
            )


def lora_config(arm: Arm):
    from peft import LoraConfig

    return LoraConfig(
        r=arm.rank,
        lora_alpha=arm.alpha,
        lora_dropout=arm.dropout,
        target_modules=list(arm.target_modules),
        **lora_settings(arm),
        task_type="CAUSAL_LM",
        bias="none",
    )


def wrap_for_training(model: nn.Module, arm: Arm, seed: int) -> nn.Module:
    """Full arm: every parameter trains. LoRA arm: a PEFT model whose adapter init is seeded."""
    if is_full(arm):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if is_lora(arm):
        from peft import get_peft_model

        check_arm(model, arm)
        torch.manual_seed(seed)
        return get_peft_model(model, lora_config(arm))
    raise ValueError(f"arm type {arm.type} does not train")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def save_final(model: nn.Module, arm: Arm, folder: Path) -> None:
    """LoRA: PEFT's standard adapter format. Full: safetensors weights (save_pretrained)."""
    model.save_pretrained(folder, safe_serialization=True)


class ArmBank:
    """Base loaded once; LoRA arms attached as named adapters; the full arm as one extra model.

    `use(name)` is a context manager yielding the model to run for that arm.
    """

    def __init__(self, base: nn.Module):
        self.base = base
        self.peft = None
        self.full: nn.Module | None = None
        self.adapters: set[str] = set()
        self.unshared: set[str] = set()  # adapters whose variant cannot share a batch (DoRA)

    def add_lora(self, name: str, adapter_dir: Path) -> None:
        from peft import PeftModel

        key = adapter_key(name)
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=key)
        else:
            self.peft.load_adapter(str(adapter_dir), adapter_name=key)
        self.peft.eval()
        self.adapters.add(name)
        if not variant_of(self.peft.peft_config[key]).shares_batch:
            self.unshared.add(name)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the base model's weights are stored (and computed) in."""
        return precision.model_dtype(self.base)

    def add_full(self, model: nn.Module) -> None:
        """The fully fine-tuned model, cast to the base's dtype so that every arm runs in one precision."""
        self.full = precision.for_inference(model, self.dtype).eval()

    @contextlib.contextmanager
    def use(self, name: str):
        if name == "full":
            if self.full is None:
                raise KeyError("full arm not loaded")
            yield self.full
        elif name == "base":
            if self.peft is None:
                yield self.base
            else:
                with self.peft.disable_adapter():
                    yield self.peft
        elif name in self.adapters:
            self.peft.set_adapter(adapter_key(name))
            yield self.peft
        else:
            raise KeyError(f"arm {name} not loaded")

    def logits(self, name: str, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Float32 logits of one arm."""
        with self.use(name) as m:
            return m(input_ids=ids, attention_mask=attn).logits.float()

    def mixable(self, names: list[str]) -> list[str]:
        """The arms of `names` that can share a batch: base and LoRA adapters whose variant can
        (not DoRA: PEFT does not mix DoRA rows), provided at least one adapter is loaded."""
        if self.peft is None:
            return []
        return [n for n in names if n == "base" or (n in self.adapters and n not in self.unshared)]

    def logits_many(self, names: list[str], ids: torch.Tensor, attn: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float32 logits of each arm on the same batch, mixable arms in one forward pass."""
        mix = self.mixable(names) if len(names) > 1 else []
        out = {}
        if len(mix) > 1:
            k = len(mix)
            rows = [adapter_key(n) for n in mix for _ in range(ids.shape[0])]
            logits = self.peft(input_ids=ids.repeat(k, 1), attention_mask=attn.repeat(k, 1),
                               adapter_names=rows).logits.float()
            out = dict(zip(mix, logits.chunk(k)))
        for n in names:
            if n not in out:
                out[n] = self.logits(n, ids, attn)
        return out

    @property
    def names(self) -> list[str]:
        return (["base"] + (["full"] if self.full is not None else []) + sorted(self.adapters))
