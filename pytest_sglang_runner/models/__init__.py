"""Models the kit brings: the embedded checkpoints it writes (`embedded`, `embedded_llama`, their
vocabulary in `words`), a real decoder written from an optional package (`smollm2`), and model
classes SGLang lacks (`roberta_mlm`, with `fused` kernels).

May import: the leaf modules and the version adapter (`sglang_compat`); `roberta_mlm` imports
SGLang itself, so only a build imports it (`register_kit_models`). Never the runner or above.
"""

KIT_ARCHITECTURES = ("RobertaForMaskedLM",)


def register_kit_models() -> None:
    """Add the kit's model classes to SGLang's registry (imports SGLang)."""
    from .roberta_mlm import register

    register()
