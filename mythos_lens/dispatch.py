"""Models bigger than one device: accelerate's big-model dispatch (GPUs, CPU, disk) for capture.

``dispatch(model, device_map, offload_dir)`` validates a device map (module or tensor name ->
``"cpu"``, ``"disk"``, a GPU index or ``"cuda:N"``), gives every parameter or buffer the map
does not cover the main device (upstream OpenMythos keeps its rotary tables ``freqs_cis`` and
``freqs_cis_mla`` as root buffers, and accelerate refuses a map that misses them), and calls
``accelerate.dispatch_model``. accelerate wraps each module's ``forward``; capture's forward
hooks sit on the same modules and see the same values (tested bit for bit with disk offload).
Captured tensors go to capture's ``store_device``. :func:`onloaded` loads offloaded weights for
code that reads them outside a forward (a model's per-model parameters).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from mythos_lens.errors import MythosLensError

Device = str | int


def _check_device(name: str, value: Any) -> Device:
    expected = '"cpu", "disk", a GPU index or "cuda:N"'
    if isinstance(value, str) and value in ("cpu", "disk"):
        return value
    index = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str) and (
        value == "cuda" or value.startswith("cuda:") or value.isdigit()
    ):
        digits = value.removeprefix("cuda").removeprefix(":") or "0"
        index = int(digits) if digits.isdigit() else None
    if index is None:
        raise MythosLensError(f"device {value!r} for {name!r}", expected)
    if not torch.cuda.is_available() or not 0 <= index < torch.cuda.device_count():
        raise MythosLensError(f"device {value!r} for {name!r}: no such GPU here",
                              '"cpu", "disk" or a GPU this machine has')  # fmt: skip
    return index


def main_device(device_map: Mapping[str, Device]) -> Device:
    """Where inputs and uncovered tensors go: the first GPU in the map, else ``"cpu"``
    (accelerate's rule)."""
    return next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")


def complete_device_map(model: torch.nn.Module, device_map: Mapping[str, Any]) -> dict[str, Device]:
    """`device_map` validated, plus the main device for every parameter or buffer it misses.

    Keys are module names (``"recurrent.block"``) or tensor names; ``""`` maps the whole model.
    Raises MythosLensError for a key the model does not have or a device this machine lacks."""
    if not isinstance(device_map, Mapping) or not device_map:
        raise MythosLensError(f"device_map={device_map!r}", "a non-empty {module name: device} map")
    modules = dict(model.named_modules())
    every = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    tensors = [n for n, _ in every]  # tied weights too (head.weight is embed.weight)
    out: dict[str, Device] = {}
    for key, value in device_map.items():
        if not isinstance(key, str) or (key not in modules and key not in tensors):
            top = [n for n in modules if n and "." not in n]
            raise MythosLensError(f"device_map key {key!r} is not a module or tensor of the model",
                                  f"names like {top}")  # fmt: skip
        out[key] = _check_device(key, value)
    main = main_device(out)

    def covered(name: str) -> bool:
        return any(k == "" or name == k or name.startswith(k + ".") for k in out)

    for name in tensors:
        if not covered(name):
            out[name] = main
    return out


def dispatch(
    model: torch.nn.Module,
    device_map: Mapping[str, Any],
    offload_dir: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """Spread `model` over devices with accelerate (see the module docstring); ``"disk"``
    entries need `offload_dir`. Returns the dispatched model (the same object, in eval mode)."""
    full = complete_device_map(model, device_map)
    if "disk" in full.values() and offload_dir is None:
        raise MythosLensError(
            'a device map with "disk" but no offload directory', "--offload-dir DIR"
        )
    from accelerate import dispatch_model

    if offload_dir is not None:
        Path(offload_dir).mkdir(parents=True, exist_ok=True)
    model.eval().requires_grad_(False)  # for inference: readouts run its modules as they are
    with warnings.catch_warnings():  # accelerate needs root tensors named, then warns about them
        warnings.filterwarnings("ignore", message="The following device_map keys do not match")
        return dispatch_model(model, device_map=full, offload_dir=offload_dir)


def is_dispatched(model: torch.nn.Module) -> bool:
    """Whether accelerate has hooked any module of `model`."""
    return any(hasattr(m, "_hf_hook") for m in model.modules())


@contextlib.contextmanager
def onloaded(model: torch.nn.Module) -> Iterator[None]:
    """Inside the body, every weight accelerate offloaded (a meta tensor outside a forward) is
    loaded to its module's execution device; nothing happens for a model that is not dispatched."""
    if not is_dispatched(model):
        yield
        return
    from accelerate.utils import align_module_device, has_offloaded_params

    with contextlib.ExitStack() as stack:
        for module in model.modules():
            if has_offloaded_params(module):
                stack.enter_context(align_module_device(module))
        yield
