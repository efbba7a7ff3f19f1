"""LoRAs on a compiled denoiser: a row's LoRAs are copied into fixed adapter slots, so the compiled graph never
changes."""

from __future__ import annotations

import torch

from sdbatch.errors import VariantError
from sdbatch.render.variants.fetch import labelled
from sdbatch.render.variants.loras import (
    LoraAdapters,
    LoraState,
    text_encoder_reports_off,
)

DOWN_KEYS = ("lora_A", "lora.down", "lora_down", "lora_linear_layer.down")


def slot_name(slot: int) -> str:
    return f"slot{slot}"


class HotswapLoras(LoraAdapters):
    """Denoiser parts are hotswapped into `slots` adapters padded to `rank`; each row weight is folded into the
    slot's scaling tensors and an unused slot is zeroed, so no change of variant changes the graph.
    Text encoder parts (not compiled; peft cannot hotswap them) are reloaded into the same slot names."""

    def __init__(self, pipe, cache, fetcher, slots: int, rank: int, family=None):
        super().__init__(pipe, cache, fetcher, max_resident=slots, family=family)
        self.rank = rank
        # A LoRA that targets layers its slot lacks re-creates the slot: the compiled denoiser recompiles once.
        self.rebuilds = 0
        self._held: list[tuple[str, float] | None] = [None] * slots  # (sha256, weight) in each slot
        self._created: list[bool] = [False] * slots  # the slot's adapter exists in the denoiser
        # Per slot: the text encoders (family.lora_text_encoders) holding its LoRA's part.
        self._text: list[tuple[str, ...]] = [()] * slots

    @property
    def denoiser(self):
        return self.family.denoiser(self.pipe)

    def resident(self) -> list[str]:
        return [held[0] for held in self._held if held]

    def activate(self, loras: list[dict]) -> list[dict]:
        if len(loras) > len(self._held):
            raise VariantError(f"the row uses {len(loras)} LoRAs but the compiled denoiser has {len(self._held)} "
                               "LoRA slots; raise lora_slots")
        paths = [str(lora["path"]) for lora in loras]
        found = [self._lookup(path) for path in paths]
        if len({sha for sha, _ in found}) < len(found):
            raise VariantError("the same LoRA file is listed twice in one row; list it once with the summed weight")
        for slot, (lora, (sha, state)) in enumerate(zip(loras, found)):
            if self._held[slot] != (sha, float(lora["weight"])):
                with labelled(f"LoRA {lora['path']}"):
                    self._place(slot, state, float(lora["weight"]))
        for slot in range(len(loras), len(self._held)):
            self._clear(slot)
        self._activate_text_encoder()
        return [{"path": path, "sha256": sha, "weight": float(lora["weight"])}
                for path, lora, (sha, _) in zip(paths, loras, found)]

    def _place(self, slot: int, state: LoraState, weight: float) -> None:
        prefix = f"{self.family.denoiser_lora_prefix}."
        part = {k: v for k, v in state.state_dict.items() if k.startswith(prefix)}
        rank = max((v.shape[0] for k, v in part.items() if any(d in k for d in DOWN_KEYS)), default=0)
        if rank > self.rank:
            raise VariantError(f"its rank {rank} is above the hotswap rank {self.rank}; raise lora_rank")
        self._held[slot] = None  # until the copy below is complete
        if part:
            self._swap_denoiser(slot, state)
            _scale_slot(self.denoiser, slot_name(slot), weight)
        else:
            _zero_slot(self.denoiser, slot_name(slot))
        self._load_text_part(slot, state)
        self._held[slot] = (state.sha256, weight)
        self.loads += 1

    def _swap_denoiser(self, slot: int, state: LoraState) -> None:
        name, denoiser = slot_name(slot), self.denoiser
        if self._created[slot]:
            try:
                self._into_denoiser(state, name, hotswap=True)
                return
            except (RuntimeError, ValueError):  # targets other layers, or other alphas per layer
                if name in getattr(denoiser, "peft_config", {}):  # diffusers may have removed it already
                    denoiser.delete_adapters([name])
                self._created[slot] = False
                self.rebuilds += 1
        # Scalings as tensors and ranks padded on the new layers (enable_lora_hotswap), before they are used.
        denoiser.enable_lora_hotswap(target_rank=self.rank, check_compiled="ignore")
        self._into_denoiser(state, name, hotswap=False)
        self._created[slot] = True
        _activate_all(denoiser, [slot_name(i) for i, made in enumerate(self._created) if made])

    def _into_denoiser(self, state: LoraState, name: str, hotswap: bool) -> None:
        self.family.load_denoiser_lora(self.pipe, dict(state.state_dict), adapter_name=name,
                                       network_alphas=state.network_alphas, metadata=state.metadata,
                                       _pipeline=self.pipe, hotswap=hotswap)

    def _load_text_part(self, slot: int, state: LoraState) -> None:
        from diffusers.utils.peft_utils import delete_adapter_layers

        name = slot_name(slot)
        for prefix in self._text[slot]:
            delete_adapter_layers(getattr(self.pipe, prefix), name)
        self._text[slot] = ()
        loaded = []
        for prefix in self.family.lora_text_encoders(self.pipe):
            if any(k.startswith(f"{prefix}.") for k in state.state_dict):
                with text_encoder_reports_off():
                    self.pipe.load_lora_into_text_encoder(
                        dict(state.state_dict), text_encoder=getattr(self.pipe, prefix), prefix=prefix,
                        adapter_name=name, network_alphas=state.network_alphas, metadata=state.metadata,
                        lora_scale=self.pipe.lora_scale, _pipeline=self.pipe)
                loaded.append(prefix)
        self._text[slot] = tuple(loaded)

    def _clear(self, slot: int) -> None:
        if self._held[slot] is None:
            return
        from diffusers.utils.peft_utils import delete_adapter_layers

        _zero_slot(self.denoiser, slot_name(slot))
        for prefix in self._text[slot]:
            delete_adapter_layers(getattr(self.pipe, prefix), slot_name(slot))
        self._text[slot] = ()
        self._held[slot] = None

    def _activate_text_encoder(self) -> None:
        from diffusers.loaders.lora_base import set_adapters_for_text_encoder

        for prefix in self.family.lora_text_encoders(self.pipe):
            slots = [i for i, (held, text) in enumerate(zip(self._held, self._text)) if held and prefix in text]
            if slots:  # the text encoders are not compiled: plain per-adapter weights are fine there
                set_adapters_for_text_encoder([slot_name(i) for i in slots], getattr(self.pipe, prefix),
                                              [self._held[i][1] for i in slots])


def _lora_layers(denoiser, name: str):
    from peft.tuners.lora import LoraLayer

    return [m for m in denoiser.modules() if isinstance(m, LoraLayer) and name in m.lora_A]


@torch.no_grad()
def _scale_slot(denoiser, name: str, weight: float) -> None:
    """The row's weight, folded into the slot's scaling tensors in place (set_adapters would make them floats,
    which the compiled graph guards on)."""
    for module in _lora_layers(denoiser, name):
        module.scaling[name].mul_(weight)


@torch.no_grad()
def _zero_slot(denoiser, name: str) -> None:
    for module in _lora_layers(denoiser, name):
        module.lora_B[name].weight.zero_()


def _activate_all(denoiser, names: list[str]) -> None:
    """Every created slot active: peft's per-layer set_adapter leaves the scalings alone."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter([n for n in names if n in module.lora_A])
