"""Image decoding shared by every source: read, resize, normalise with the ImageNet statistics."""
from __future__ import annotations

import os

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

# ImageNet statistics: images come out roughly zero mean / unit std, as torchvision backbones expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalise(x01: torch.Tensor) -> torch.Tensor:
    """float [3,H,W] in [0,1] -> normalised float32."""
    return TF.normalize(x01.to(torch.float32), list(MEAN), list(STD))


def load_image(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """Read an image file as RGB, resize to a square image_size, normalise: float32 [3,S,S]."""
    with Image.open(path) as im:
        im.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale when possible
        im = im.convert("RGB")
        t = TF.pil_to_tensor(im)  # uint8 [3,h,w]
    if t.shape[-2:] != (image_size, image_size):
        t = TF.resize(t, [image_size, image_size], antialias=True)
    return normalise(TF.to_dtype(t, torch.float32, scale=True))
