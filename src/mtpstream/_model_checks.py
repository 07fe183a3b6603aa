"""The checks :func:`mtpstream.init` runs on its models before any native code."""

from __future__ import annotations

from .errors import InvalidOptionError, NoMTPHeadError, SessionClosedError
from .model import Model

__all__ = ["check_models"]


def check_models(model: Model, draft_model: Model | None, n_draft: int) -> None:
    """Raise when ``model`` (and ``draft_model``) cannot run a session drafting
    ``n_draft`` tokens: :class:`InvalidOptionError` (not a model, a sidecar as target,
    mismatched vocabularies or widths), :class:`SessionClosedError` (a closed model),
    :class:`NoMTPHeadError` (no MTP head to draft with)."""
    if not isinstance(model, Model):
        raise InvalidOptionError(
            f"model must be an mtpstream.Model, not {type(model).__name__}", field="model"
        )
    if model.closed:
        raise SessionClosedError("the model is closed")
    if model.is_sidecar:
        raise InvalidOptionError(
            f"'{model.path.name}' is an MTP-only sidecar (it has no trunk layers); load the full "
            "model as the target and pass this file as draft_model=",
            field="model",
        )
    if n_draft == 0:
        return
    if draft_model is not None:
        if not isinstance(draft_model, Model):
            raise InvalidOptionError("draft_model must be an mtpstream.Model", field="draft_model")
        if draft_model.closed:
            raise SessionClosedError("the draft model is closed")
        if not draft_model.has_mtp:
            raise NoMTPHeadError(
                f"draft_model '{draft_model.path.name}' has no loaded MTP head"
                + (" (it was loaded with load_mtp=False)" if not draft_model.load_mtp else "")
            )
        if draft_model.n_vocab != model.n_vocab:
            raise InvalidOptionError(
                f"draft_model vocabulary ({draft_model.n_vocab}) differs from the target's ({model.n_vocab})",
                field="draft_model",
            )
        if draft_model.n_embd != model.n_embd:
            raise InvalidOptionError(
                f"draft_model hidden width ({draft_model.n_embd}) differs from the target's ({model.n_embd})",
                field="draft_model",
            )
        return
    if not model.has_mtp:
        if model.n_layer_nextn > 0 and not model.load_mtp:
            raise NoMTPHeadError(
                f"'{model.path.name}' was loaded with load_mtp=False, so its MTP head was skipped; "
                "reload it with load_mtp=True, or use n_draft=0 for plain decoding"
            )
        raise NoMTPHeadError(
            f"'{model.path.name}' has no MTP head; use n_draft=0 for plain decoding, a GGUF that "
            "preserves the MTP (NextN) layers, or pass an MTP sidecar GGUF as draft_model="
        )
