"""Stages: a run that starts from another run's checkpoint (``[init] from``).

A multi-stage recipe (WeSpeaker's large-margin fine-tuning, for instance) trains a first run,
averages its last models, then starts a second run from that average with its own crops,
margin, rate and augmentation. The init is applied once, when the run starts; a resumed run
continues from its own state, and its recipe keeps the record of the init made at the start
(the file and its fingerprint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from xvec.checkpoint import Checkpoint, load_state_strict, read_checkpoint
from xvec.config import Recipe
from xvec.embed import model_fingerprint
from xvec.errors import XvecError
from xvec.training.events import StageInit
from xvec.training.run_dir import recorded_init

__all__ = ["params_record", "start_from", "with_init_record"]


def with_init_record(recipe: Recipe, resume: bool) -> Recipe:
    """The recipe with the ``[init]`` the run records: on a new run the init file's
    fingerprint (checked against ``init.sha256`` when given); on a resume the record made when
    the run started (the init applied then; any ``[init]`` of the resuming recipe is moot)."""
    if resume:
        return recipe.model_copy(update={"init": recorded_init(Path(recipe.train.output_dir))})
    if recipe.init is None:
        return recipe
    path = recipe.init.from_
    if not path.is_file():
        raise XvecError(f"{path}: checkpoint not found (init.from); train the previous stage first")
    fingerprint = model_fingerprint(path)
    if recipe.init.sha256 is not None and recipe.init.sha256 != fingerprint:
        raise XvecError(
            f"{path}: its fingerprint is {fingerprint} but init.sha256 is {recipe.init.sha256}: "
            "the file changed since the recipe was written; remove init.sha256 to accept it"
        )
    init = recipe.init.model_copy(update={"sha256": fingerprint})
    return recipe.model_copy(update={"init": init})


def params_record(module: nn.Module) -> dict[str, Any]:
    """A module's parameters as a checkpoint records them (JSON values)."""
    params = getattr(module, "params", {})
    params = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    return json.loads(json.dumps(params or {}))


def start_from(recipe: Recipe, model: nn.Module, loss: nn.Module) -> StageInit | None:
    """Load ``[init] from``'s model weights into ``model``, and its loss weights into ``loss``
    when their layout and class count match; None when the recipe has no ``[init]``.

    A checkpoint of another model or other model parameters is refused in one line naming it:
    its weights would not mean what this recipe's model expects.
    """
    if recipe.init is None:
        return None
    path = recipe.init.from_
    ckpt = read_checkpoint(path)
    record, params = ckpt.meta["model"], params_record(model)
    if record["name"] != recipe.model.name or record["params"] != params:
        theirs = f"'{record['name']}' {json.dumps(record['params'], sort_keys=True)}"
        ours = f"'{recipe.model.name}' {json.dumps(params, sort_keys=True)}"
        raise XvecError(
            f"{path}: init.from holds model {theirs} but the recipe trains {ours}; start a stage "
            "from a checkpoint of the same architecture and model parameters"
        )
    load_state_strict(model, ckpt.model_state, str(path))
    return StageInit(checkpoint=path, loss=_load_loss(ckpt, loss))


def _load_loss(ckpt: Checkpoint, loss: nn.Module) -> str:
    """Load the checkpoint's loss weights into ``loss`` when they fit; says what happened."""
    theirs = ckpt.meta.get("loss") or {}
    classes = getattr(loss, "num_classes", None)
    mine = loss.state_dict()
    if not mine:
        return "the loss has no weights"
    if not ckpt.loss_state:
        return "a fresh loss head: the checkpoint has no loss weights"
    if theirs.get("num_classes") != classes:
        return (
            f"a fresh loss head: the checkpoint's loss has {theirs.get('num_classes')} "
            f"classes, the train list {classes}"
        )
    same_layout = set(mine) == set(ckpt.loss_state) and all(
        ckpt.loss_state[key].shape == value.shape for key, value in mine.items()
    )
    if not same_layout:
        return f"a fresh loss head: the checkpoint's loss '{theirs.get('name')}' differs"
    loss.load_state_dict(ckpt.loss_state)
    return f"loss weights from the checkpoint ('{theirs.get('name')}')"
