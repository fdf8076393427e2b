"""Training checkpoints. A checkpoint is two files: tensors.safetensors (trainable parameters, best
parameters, optimizer moments, RNG state) and state.json (everything else, and the key it was written
under). Neither format can run code when read, so a run folder from anywhere is safe to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from lorafair.arms.bank import trainable_state

# the loop's TrainResult (lorafair.training.loop): read and written by attribute, so the loop,
# which imports this module, is not imported back
TrainResult = Any


CHECKPOINT_TENSORS, CHECKPOINT_STATE = "tensors.safetensors", "state.json"


def save_checkpoint(folder: Path, key: str, model, opt, sched, step, res: TrainResult, best_state,
                    bad_evals) -> None:
    from safetensors.torch import save_file

    from lorafair.store import rundir as store

    tensors = {f"params.{n}": t.contiguous() for n, t in trainable_state(model).items()}
    tensors |= {f"best.{n}": t.contiguous() for n, t in (best_state or {}).items()}
    tensors["rng"] = torch.get_rng_state()
    o = opt.state_dict()
    moments: dict[str, dict] = {}  # per parameter: its state's names, with the value when not a tensor
    for idx, st in o["state"].items():
        moments[str(idx)] = {}
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{name}"] = v.contiguous()
            moments[str(idx)][name] = None if torch.is_tensor(v) else v
    state = {
        "key": key, "step": step, "log": res.log, "val_curve": res.val_curve, "tokens": res.tokens,
        "has_best": best_state is not None, "bad_evals": bad_evals, "wall_s": res.wall_s,
        "scheduler": sched.state_dict(), "param_groups": o["param_groups"], "moments": moments,
    }
    folder.mkdir(parents=True, exist_ok=True)
    # the tensors first, the state last: a state.json always names tensors that are complete
    store.write_via_temp(folder / CHECKPOINT_TENSORS, lambda tmp: save_file(tensors, tmp))
    store.write_json(folder / CHECKPOINT_STATE, state)


def load_checkpoint(folder: Path, key: str, log: Callable[[str], None] | None = None) -> dict | None:
    """The checkpoint in `folder` when it was written under `key`; None (and the folder emptied)
    when there is none, it is stale, or it is in the old pickle format, which is never read."""
    import shutil

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lorafair.store import rundir as store
    from lorafair.errors import UserError

    say = log or (lambda m: None)
    state_file, tensor_file = folder / CHECKPOINT_STATE, folder / CHECKPOINT_TENSORS
    if not state_file.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            say(f"{folder}: checkpoint in an old or incomplete format, discarded; the arm starts over")
            shutil.rmtree(folder, ignore_errors=True)  # every process of a multi-process run may try
        return None
    try:
        state = store.read_json(state_file)
        stale = not isinstance(state, dict) or state.get("key") != key
        if stale:
            say(f"{folder}: checkpoint written for other settings (study, data or model changed), discarded; "
                "the arm starts over")
            shutil.rmtree(folder, ignore_errors=True)  # every process of a multi-process run may try
            return None
        tensors = load_file(tensor_file)
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state["param_groups"]]
        opt_state = {int(i): {n: tensors[f"opt.{i}.{n}"] if v is None else v for n, v in names.items()}
                     for i, names in state["moments"].items()}
        return {
            "params": {k[7:]: v for k, v in tensors.items() if k.startswith("params.")},
            "best_state": ({k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
                           if state["has_best"] else None),
            "optimizer": {"state": opt_state, "param_groups": groups},
            "scheduler": state["scheduler"], "rng": tensors["rng"],
            **{k: state[k] for k in ("step", "log", "val_curve", "tokens", "bad_evals", "wall_s")},
        }
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise UserError(f"{folder}: the checkpoint is damaged ({type(e).__name__}); delete that folder to train "
                        "the arm from the start") from None
