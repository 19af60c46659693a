"""Which LoRA adapter each row of a forward runs through, at the least cost peft allows (transformers engine).

peft's own per-row route, `model(..., adapter_names=[...])`, walks every module of the model twice on every
call (to check the names, then to register and remove a pre-forward hook on each LoRA layer) and then takes
each LoRA layer's mixed-batch path, which indexes and copies sub-batches. Measured (2 busy cores, float32):
the walk alone is 5-7 ms per forward on Qwen2.5 0.5B, paid even when every row is the base model; on the tiny
test model a base row's decode step costs 5.9 ms that way against 4.5 ms without adapters loaded.

So the engine picks the cheapest route a batch allows, and only pays to change route when the batch changes:
- every row on the base model: the LoRA layers are disabled (each runs its base layer only, exactly the
  model without adapters);
- every row on one adapter: that adapter is the active one (peft's plain single-adapter path, no indexing);
- rows on different adapters: peft's mixed-batch path, with `adapter_names` handed to the LoRA layers by
  pre-forward hooks kept while batches stay mixed (what peft's per-call hooks do, without the per-call walk).
Each route computes, per row, what that row's adapter gives alone. One thread (the engine's worker) owns it.
"""

from __future__ import annotations

from typing import Any

from voxgrid.services.llm.adapters import BASE


class AdapterRouting:
    """The route (base / one adapter / mixed rows) of a peft model with several LoRA adapters loaded."""

    def __init__(self, peft_model: Any) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.model = peft_model
        self._layers = [m for m in peft_model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        # A fully trained module (modules_to_save) cannot be made active for an adapter that lacks it: with
        # any such module, a batch on one adapter takes the mixed-batch route too (correct, a little slower).
        self._single = all(isinstance(m, BaseTunerLayer) for m in self._layers)
        self._route: str | None = "?"  # "" = base only, a name = one adapter, None = rows on different adapters
        self._rows: list[str] | None = None  # what the hooks hand the layers on the mixed route
        self._hooks: list[Any] = []  # present on the mixed route only (a hook slows every layer call a little)
        self.use([""])

    @property
    def rows(self) -> list[str] | None:
        """Each row's adapter on the mixed route (BASE for the base model); None on the base or one-adapter route."""
        return self._rows

    def _inject_rows(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args, {**kwargs, "adapter_names": self._rows}

    def use(self, adapters: list[str]) -> None:
        """Route the next forward: row i through `adapters[i]` ("" = the base model)."""
        names = set(adapters)
        if names == {""}:
            route: str | None = ""  # base only
        elif len(names) == 1 and self._single:
            route = adapters[0]  # one adapter
        else:
            route = None  # mixed rows
        self._rows = [a or BASE for a in adapters] if route is None else None
        if route == self._route:
            return  # same layer state (on the mixed route only what the hook hands over changes)
        for layer in self._layers:
            layer.enable_adapters(route != "")
            if route:  # on the mixed route the layers pick per row, whatever is active
                layer.set_adapter(route, inference_mode=True)
        if route is None:
            hook = self._inject_rows
            self._hooks = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in self._layers]
        else:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
        self._route = route
