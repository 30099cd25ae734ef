"""The recipes' image transforms (timm's ``create_transform``), made to behave as in the paper's runs.

timm's RandAugment ``rand-m9-mstd0.5-inc1`` (DeiT, Swin, T2T, CeiT on ImageNet; ViT-Lite on
CIFAR-100) draws the magnitude from N(9, 0.5) clipped to [0, 10]. ``PosterizeIncreasing`` keeps
``4 - int(m / 10 * 4)`` bits, which is 0 bits at m >= 10 (about one draw in 500 posterize ops).
Pillow < 13 returned a black image for 0 bits, which is what every published run trained on;
Pillow 13 raises ``ValueError: bits must be between or equal to 1 and 8``, which would end a real
run in its first steps (a batch of 1,024 contains such a draw with probability ~0.87).

``recipe_transform`` therefore swaps the posterize function of each timm augmentation op for
:func:`posterize`, which keeps the old meaning of 0 bits. Only the op objects of the transform
it returns change; timm's module-level tables are left alone.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from PIL import Image, ImageOps

POSTERIZE_OPS = frozenset({"Posterize", "PosterizeIncreasing", "PosterizeOriginal"})


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of each channel; 0 bits is a black image.

    Pillow < 13's ``ImageOps.posterize(img, 0)`` masked every bit away (all channels 0); this
    returns exactly that on any Pillow, and defers to Pillow for 1..7 bits."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _augment_ops(transform: Any) -> Iterator[Any]:
    """Every timm ``AugmentOp`` inside a (possibly composed) transform."""
    children: Iterable[Any] = getattr(transform, "transforms", None) or ()
    for child in children:
        yield from _augment_ops(child)
    ops = list(getattr(transform, "ops", None) or ())  # RandAugment, AugMix
    for sub_policy in getattr(transform, "policy", None) or ():  # AutoAugment: lists of ops
        ops.extend(sub_policy)
    for op in ops:
        if hasattr(op, "aug_fn") and hasattr(op, "name"):
            yield op


def pillow_safe(transform: Any) -> Any:
    """``transform`` with every posterize op using :func:`posterize` (returned for chaining)."""
    for op in _augment_ops(transform):
        if op.name in POSTERIZE_OPS:
            op.aug_fn = posterize
    return transform


def recipe_transform(**create_transform_kwargs: Any) -> Any:
    """timm's ``create_transform(**kwargs)`` with the posterize fix applied (see module doc)."""
    from timm.data import create_transform

    return pillow_safe(create_transform(**create_transform_kwargs))
