"""Model cards for equivariant models, rendered with `huggingface_hub.ModelCard` from `model_cards/`."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .configuration_equivariant import EquivariantConfig
from .groups import describe_form
from .methods import SYMMETRIZATIONS, get_symmetrization

TEMPLATE = Path(__file__).parent / "model_cards" / "equivariant_model.md"
VISION_TEMPLATE = Path(__file__).parent / "model_cards" / "equivariant_vision_model.md"
GENERATED = "<!-- Written by hf-equivariant"  # opens a card that save_pretrained may rewrite whole
SECTION = re.compile(r"<!-- hf-equivariant:groups -->.*?<!-- /hf-equivariant:groups -->", re.DOTALL)


def templates_shipped() -> bool:
    """Whether the card templates are here: they ship with the library, not with code pushed as remote code."""
    return TEMPLATE.exists() and VISION_TEMPLATE.exists()


def _hub_id(name: str | None) -> str | None:
    """`name` if it reads as a Hub repository id (a local path does not)."""
    if not name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _base_model_name(name: str | None) -> tuple[str | None, str | None]:
    """(name to show, note): a Hub id as it is; a local path as its folder (or file) name, never the whole path."""
    if not name or _hub_id(name):
        return name or None, None
    return Path(name).name, "a local folder or file: only its name is recorded here"


def _group_description(factor) -> dict:
    """The card's data for one factor: the words that have a swapped form, the swapped and the dropped forms."""
    def swapped(j):
        word = factor.classes[0][j]
        return any(form[0].strip() in (word, word[:1].upper() + word[1:]) for form in factor.forms)

    positions = [j for j in range(len(factor.classes[0])) if not factor.forms or swapped(j)]
    return {
        "name": factor.name, "kind": factor.kind, "order": factor.order, "num_orbits": len(factor.orbits),
        "classes": [[words[j] for j in positions] for words in factor.classes],
        "forms": [describe_form(f) for f in factor.forms], "dropped": [describe_form(f) for f in factor.dropped],
    }


def equivariant_model_card(config: EquivariantConfig, tags: list[str] | None = None, repo_id: str | None = None):
    """A card stating the base model, every group with the words it swaps and the forms it drops, the
    symmetrisation, the action and the cost."""
    factors = config.factors
    orders = [f.order for f in factors]
    base_model = _hub_id(config.base_model)  # the metadata names Hub models only
    shown, note = _base_model_name(config.base_model)
    seq2seq = config.is_encoder_decoder
    card_data = ModelCardData(
        library_name="transformers",
        base_model=base_model,
        pipeline_tag="text2text-generation" if seq2seq else "text-generation",
        tags=list(
            dict.fromkeys(
                ["hf-equivariant", "equivariance", config.symmetrization]
                + [f"group:{f.name}" for f in factors]
                + (tags or [])
            )
        ),
    )
    architecture = config.text_config.model_type
    method = get_symmetrization(config.symmetrization)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=f"Equivariant {shown or architecture}".strip(),
        base_model=shown,
        base_model_note=note,
        architecture=architecture,
        group_expression=" x ".join(f"{f.name} ({f.kind} {f.order})" for f in factors) or "the trivial group",
        group_order=math.prod(orders),
        groups=[_group_description(f) for f in factors],
        symmetrization=config.symmetrization,
        average=config.average,
        action=config.action,
        method_description=method.description,
        method_citation=method.citation,
        method_trainable=method.trainable,
        num_copies=method.inner_passes(orders),
        method_copies={name: other.inner_passes(orders) for name, other in SYMMETRIZATIONS.items()},
        auto_class="AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM",
        repo_id=repo_id or base_model and f"<user>/equivariant-{base_model.split('/')[-1]}" or "<user>/<repo>",
    )


def save_model_card(card: ModelCard, path: str) -> None:
    """Write `card` to `path` unless a card written by someone else is there: then merge it into that one.

    A README.md without our `GENERATED` comment is the user's (as peft does, we update it
    rather than replace it): it keeps its text and metadata; it gets our groups section (in place of the
    one an earlier save added, else at its end), our tags and, where it names none, our metadata.
    """
    if os.path.exists(path):
        existing = ModelCard.load(path)
        if GENERATED not in existing.text:
            section = SECTION.search(card.text).group(0)
            if SECTION.search(existing.text):
                existing.text = SECTION.sub(lambda _: section, existing.text, count=1)
            else:
                existing.text = existing.text.rstrip() + "\n\n" + section + "\n"
            for key, value in card.data.to_dict().items():
                if key == "tags":
                    existing.data.tags = list(dict.fromkeys([*(existing.data.tags or []), *value]))
                elif existing.data.get(key) is None:
                    existing.data[key] = value
            card = existing
    card.save(path)


def vision_model_card(config, pipeline_tag: str, auto_class: str, link: str = "softmax", tags: list[str] | None = None,
                      repo_id: str | None = None):
    """A card for an image model invariant to image groups (`EquivariantVisionConfig`): the base model, the
    groups, the method with its citation and the inner passes per image. `pipeline_tag`, `auto_class` and `link`
    (`image_symmetrize.LINKS`) are the wrapper's (its Auto class is the inner model's)."""
    from .image_groups import commute
    from .image_symmetrize import image_methods, image_plan

    factors = config.factors
    orders = [f.order for f in factors]
    base_model = _hub_id(config.base_model)
    shown, note = _base_model_name(config.base_model)
    card_data = ModelCardData(
        library_name="transformers",
        base_model=base_model,
        pipeline_tag=pipeline_tag,
        tags=list(dict.fromkeys(["hf-equivariant", "invariance", config.symmetrization]
                                + [f"group:{f.name}" for f in factors] + (tags or []))),
    )
    architecture = config.inner_config.model_type
    method = get_symmetrization(config.symmetrization)
    plan = image_plan(config.symmetrization, orders)
    return ModelCard.from_template(
        card_data,
        template_path=str(VISION_TEMPLATE),
        title=f"Invariant {shown or architecture}",
        base_model=shown,
        base_model_note=note,
        architecture=architecture,
        group_expression=" x ".join(f"{f.name} ({f.kind})" for f in factors),
        group_order=math.prod(orders),
        groups=[{"name": f.name, "kind": f.kind, "order": f.order} for f in factors],
        commute=commute(factors),
        symmetrization=config.symmetrization,
        method_description=method.description,
        method_citation=method.citation,
        canonicalises=bool((plan.inputs < 0).any()),
        canonical_only=bool((plan.inputs < 0).all()),
        num_copies=plan.num_copies,
        method_copies={name: image_plan(name, orders).num_copies for name in image_methods()},
        deduplicate=config.deduplicate,
        average=config.average,
        link=link,
        method_options=config.method_options or {},
        auto_class=auto_class,
        repo_id=repo_id or base_model and f"<user>/invariant-{base_model.split('/')[-1]}" or "<user>/<repo>",
    )
