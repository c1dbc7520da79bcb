"""Expose the DHM models through torchreid's own model factory (explicit call only)."""

from __future__ import annotations

from .registry import build_model, list_models


class _TorchreidBuilder:
    """A callable with torchreid's builder signature for one of our models."""

    def __init__(self, name: str):
        self.name = name
        self.__doc__ = f"reid_dhm model {name!r} (built by reid_dhm.build_model)"

    def __call__(self, num_classes, loss="softmax", pretrained=True, use_gpu=True, **kwargs):
        # use_gpu is torchreid's flag; our models take their device from .to().
        if loss != "softmax":
            raise ValueError(
                f"{self.name} trains with loss='softmax' (DHM is a softmax method); got {loss!r}"
            )
        return build_model(self.name, num_classes, pretrained=pretrained, **kwargs)

    def __eq__(self, other):
        return isinstance(other, _TorchreidBuilder) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


def register_torchreid_models(names=None) -> list[str]:
    """Add our ``dhm_*`` models to torchreid's factory so that
    ``torchreid.reid.models.build_model('dhm_resnet50', num_classes, pretrained=False)``
    works. Plain baselines keep torchreid's own entries. Calling twice is harmless;
    a name torchreid already uses for another model raises ``ValueError``.

    Returns:
        The names now served by reid_dhm in torchreid's factory.
    """
    import torchreid.reid.models as trm

    factory = vars(trm)["__model_factory"]
    names = [n for n in list_models() if n.startswith("dhm_")] if names is None else list(names)
    for name in names:
        if name not in list_models():
            raise ValueError(f"unknown model {name!r}; valid models are {list_models()}")
        current = factory.get(name)
        if current is not None and current != _TorchreidBuilder(name):
            raise ValueError(f"torchreid already has a different model named {name!r}")
        factory[name] = _TorchreidBuilder(name)
    return names
