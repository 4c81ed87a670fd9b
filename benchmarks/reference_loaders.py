"""The reference's image loader, re-implemented for side-by-side timing (benchmarks only).

ImageBind's ``data.load_and_transform_vision_data(image_paths, device)``: for each path, in order,
open the file, ``PIL.Image.open(f).convert("RGB")``, apply Resize(224, bicubic) → CenterCrop(224) →
ToTensor → Normalize(CLIP mean/std) (torchvision), move to the device; then ``torch.stack``. One
image at a time on the calling thread. (Constants: /work/shared/spec/imagebind_llm_reference.md
§1.1; written from that description, not copied.)
"""

from __future__ import annotations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _vision_transform():
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
        ]
    )


def load_and_transform_vision_data(image_paths, device="cpu"):
    """[B, 3, 224, 224] float32, the reference procedure."""
    import torch
    from PIL import Image

    if image_paths is None:
        return None
    transform = _vision_transform()  # built per call, as the reference does
    outputs = []
    for path in image_paths:
        with open(path, "rb") as fopen:
            image = Image.open(fopen).convert("RGB")
        outputs.append(transform(image).to(device))
    return torch.stack(outputs, dim=0)
