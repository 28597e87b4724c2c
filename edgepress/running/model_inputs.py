"""What the recipe's model takes: its per-sample input shape and, for a text model, its tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.core.errors import UserError
from edgepress.measure.metrics import OutputInfo
from edgepress.recipe import Recipe


def input_shape_of(recipe: Recipe) -> tuple[int, ...] | None:
    """Without the batch axis: [C, H, W] for an image model, [sequence length] for a text model.
    The first look at the recipe's model: an ONNX file is checked here, before any session opens it."""
    if recipe.model.onnx is not None:
        from edgepress.io.onnx_check import check_onnx_file, refuse_external_data

        external = check_onnx_file(recipe.model.onnx, what="[model] onnx")
        refuse_external_data(recipe.model.onnx, external, what="[model] onnx")
    shape = _declared_shape(recipe)
    if recipe.data.modality == "text" and shape is not None and recipe.model.name is not None:
        from edgepress.models.zoo import text_model_limits

        _, longest = text_model_limits(name=recipe.model.name, entry=None)
        if longest is not None and (len(shape) != 1 or shape[0] > longest):
            raise UserError(f"model {recipe.model.name!r} reads sequences of at most {longest} tokens, "
                            f"but [model] input_shape is {list(shape)}",
                            fix=f"set input_shape = [n] with n <= {longest} (128 is the usual length)")
    return shape


def _declared_shape(recipe: Recipe) -> tuple[int, ...] | None:
    if recipe.model.input_shape is not None:
        return recipe.model.input_shape
    if recipe.model.onnx is not None:
        from edgepress.runtime.session import open_session, sample_shape

        return sample_shape(open_session(recipe.model.onnx, threads=1))
    from edgepress.models.zoo import default_input_shape

    shape = default_input_shape(name=recipe.model.name, entry=recipe.model.entry)
    if shape is None:
        raise UserError(f"the model entry {recipe.model.entry!r} does not say its input shape",
                        fix="add input_shape = [C, H, W] (or [sequence length] for text) to [model]")
    return shape


def tokenizer_of(recipe: Recipe) -> Path | None:
    """A text recipe's tokenizer.json: [data] tokenizer, else the zoo model's own; None for images."""
    if recipe.data.modality != "text":
        return None
    if recipe.data.tokenizer is not None:
        return recipe.data.tokenizer
    if recipe.model.name is not None:
        from edgepress.models.zoo import text_model_limits

        return text_model_limits(name=recipe.model.name, entry=None)[0]
    return None


def input_names_of(recipe: Recipe) -> tuple[str, ...]:
    """The model's inputs by name: an ONNX file's own, a torch model's forward arguments (one: "input")."""
    if recipe.model.onnx is not None:
        from edgepress.runtime.session import open_session

        return tuple(i.name for i in open_session(recipe.model.onnx, threads=1).get_inputs())
    if recipe.data.modality == "text":
        return ("input_ids", "attention_mask", "token_type_ids")
    import torch

    from edgepress.models.zoo import build_model
    from edgepress.io.torch_outputs import input_names

    with torch.random.fork_rng(devices=[]):  # the run's seeded draws stay what they were
        return input_names(build_model(name=recipe.model.name, entry=recipe.model.entry, kwargs=recipe.model.kwargs))


def output_infos(recipe: Recipe, sample: np.ndarray | dict[str, np.ndarray]) -> list[OutputInfo]:
    """Each output of the recipe's model on one sample of its data: name, shape (batch 1), float or not. The
    untrained model answers this (the shapes are the architecture's); an output a metric cannot read is refused
    by the task (edgepress/measure/task.py) before any stage."""
    batch = {k: v[None] for k, v in sample.items()} if isinstance(sample, dict) else sample[None]
    if recipe.model.onnx is not None:
        from edgepress.runtime.session import as_feed, check_feeds, open_session

        session = open_session(recipe.model.onnx, threads=1)
        feeds = batch if isinstance(batch, dict) else {session.get_inputs()[0].name: batch}
        if len(session.get_inputs()) == 1 and len(feeds) == 1:
            feeds = {session.get_inputs()[0].name: next(iter(feeds.values()))}
        check_feeds(session, feeds, source="the evaluation data")
        try:
            values = dict(zip([o.name for o in session.get_outputs()], session.run(None, as_feed(session, feeds))))
        except Exception as exc:  # ONNX Runtime's own exception types: a model that cannot run on its data
            from edgepress.runtime.device_runner import ort_reason

            raise UserError(f"the ONNX model does not run on one evaluation sample: {ort_reason(exc)}",
                            fix="give data of the model's input shapes and types, or fix the model") from None
    else:
        values = _torch_outputs(recipe, batch if isinstance(batch, dict) else {"input": batch})
    return [OutputInfo(name, tuple(v.shape), bool(np.issubdtype(v.dtype, np.floating))) for name, v in values.items()]


def _torch_outputs(recipe: Recipe, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    from edgepress.models.zoo import build_model
    from edgepress.io.torch_outputs import forward

    with torch.random.fork_rng(devices=[]):  # the run's seeded draws stay what they were
        model = build_model(name=recipe.model.name, entry=recipe.model.entry, kwargs=recipe.model.kwargs).eval()
        try:
            return forward(model, batch)
        except UserError:
            raise
        except Exception as exc:  # the user's forward failing on the recipe's own data: their bug, one line
            shapes = {k: list(v.shape[1:]) for k, v in batch.items()}
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UserError(f"the model failed on one evaluation sample of shape "
                            f"{next(iter(shapes.values())) if len(shapes) == 1 else shapes}: "
                            f"{type(exc).__name__}: {reason}",
                            fix="make the model's forward take the data's shape, or fix the data") from None
