"""Models the kit brings: the embedded default checkpoint and SGLang classes SGLang lacks."""

KIT_ARCHITECTURES = ("RobertaForMaskedLM",)


def register_kit_models() -> None:
    """Add the kit's model classes to SGLang's registry (imports SGLang)."""
    from .roberta_mlm import register

    register()
