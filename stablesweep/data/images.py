"""Image decoding shared by every source: read, resize to uint8 pixels; normalise with the ImageNet
statistics (on the device in training: `device.DeviceInput`; here for code that wants floats)."""
from __future__ import annotations

import os
from functools import lru_cache

import torch
from PIL import Image

# ImageNet statistics: images come out roughly zero mean / unit std, as torchvision backbones expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=None)
def _affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), [3,1,1] float32 on `device`, with x * scale + shift = (x / 255 - MEAN) / STD; made
    once per device (a copy to a GPU per batch would be a host sync)."""
    mean, std = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(STD, dtype=torch.float64)
    return ((1 / (255 * std)).float().view(3, 1, 1).to(device), (-mean / std).float().view(3, 1, 1).to(device))


def normalise(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] pixels -> (x / 255 - MEAN) / STD, computed in float32 (one fused multiply-add),
    returned in `dtype`. The one normalisation: the device path and `load()` agree bit for bit."""
    scale, shift = _affine(pixels.device)
    return torch.addcmul(shift, pixels.float(), scale).to(dtype)


def decode(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """Read an image file as RGB and resize it to a square image_size: uint8 [3,S,S]. A JPEG at least
    twice the size is decoded at a reduced scale (1/2, 1/4, 1/8) first (PIL's draft)."""
    from torchvision.transforms.v2 import functional as TF  # imported by the first image read: 1 s

    with Image.open(path) as im:
        im.draft("RGB", (image_size, image_size))
        im = im.convert("RGB")
        t = TF.pil_to_tensor(im)  # uint8 [3,h,w]
    if t.shape[-2:] != (image_size, image_size):
        t = TF.resize(t, [image_size, image_size], antialias=True)
    return t
