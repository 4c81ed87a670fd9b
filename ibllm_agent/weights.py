"""The registry of official checkpoints: one table, ``WEIGHTS``, name → ``WeightSpec``.

Every file lives under the weights directory (``Settings.weights_dir``, default ``~/.cache/ibllm``)
at the relative path given here, so ``ibllm-agent download NAME`` and the code that loads a weight
agree on one location. Code that needs a checkpoint calls ``require(NAME)``, which returns its path
or raises ``MissingWeightError`` naming the file and the command that fetches it.

Kinds:

- ``file``: one or more files, each with its own URL (``WeightFile``).
- ``hf-repo``: a Hugging Face repository in diffusers layout; the files matching ``allow_patterns``
  are listed through the Hub API at download time and checked against the Hub's LFS sha256.
- ``manual``: a gated release that the user must obtain; ``how_to_get`` says how and where to put it.

Checksums: ``sha256`` is filled in only where the publisher states it (openai-whisper's URLs embed
it). Every file hosted on the Hugging Face Hub — a ``huggingface.co/.../resolve/...`` URL here or a
file of an ``hf-repo`` entry — is fetched with ``huggingface_hub`` and checked against the size and
ETag the Hub publishes at download time (sha256 of LFS files, git sha1 of small ones; ``hub.py``). Sizes
marked ``exact`` are byte counts that the download is checked against; the others are the
approximate sizes the projects give, for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ibllm_agent.errors import ManualWeightMissingError, MissingWeightError, UnknownWeightError

if TYPE_CHECKING:
    from ibllm_agent.config import Settings

Kind = Literal["file", "hf-repo", "manual"]


@dataclass(frozen=True)
class WeightFile:
    """One file of an entry: path relative to the weights dir, URL, and what is known about it."""

    path: str
    url: str | None = None
    size_bytes: int | None = None
    size_exact: bool = False
    sha256: str | None = None


@dataclass(frozen=True)
class WeightSpec:
    """One official checkpoint.

    ``path`` is what ``weights_path`` returns (relative to the weights dir): the checkpoint file of a
    single-file entry, the main file of a file+config entry, or the folder of a multi-file entry.
    ``size_bytes`` is the whole entry's size (approximate unless ``size_exact``).
    """

    name: str
    kind: Kind
    path: str
    description: str
    licence: str
    source: str
    size_bytes: int | None
    files: tuple[WeightFile, ...] = ()
    size_exact: bool = False
    # hf-repo entries
    repo_id: str | None = None
    revision: str = "main"
    allow_patterns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    # manual entries
    how_to_get: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        """File name of the entry's main path (``7B.pth``, ``tiny.pt``, a folder name ...)."""
        return Path(self.path).name

    @property
    def url(self) -> str | None:
        """Download URL of a single-file entry, the Hub page of a repo entry, else None."""
        if self.kind == "hf-repo":
            return f"https://huggingface.co/{self.repo_id}/tree/{self.revision}"
        return self.files[0].url if len(self.files) == 1 else None

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(f.url for f in self.files if f.url)

    @property
    def sha256(self) -> str | None:
        """Published sha256 of a single-file entry (None when not published or several files)."""
        return self.files[0].sha256 if len(self.files) == 1 else None

    def required_paths(self) -> tuple[str, ...]:
        """Paths (relative to the weights dir) that must exist for the entry to count as present."""
        if self.kind == "hf-repo":
            return tuple(f"{self.path}/{r}" for r in self.required)
        return tuple(f.path for f in self.files)


def _whisper(size: str, filename: str, sha256: str, nbytes: int, exact: bool) -> WeightSpec:
    base = "https://openaipublic.azureedge.net/main/whisper/models"
    return WeightSpec(
        name=f"whisper_{size.replace('-', '_')}",
        kind="file",
        path=f"whisper/{filename}",
        description=f"OpenAI Whisper {size} speech recognition (openai-whisper checkpoint format).",
        licence="MIT",
        source="https://github.com/openai/whisper (whisper/__init__.py _MODELS; sha256 is in the URL)",
        size_bytes=nbytes,
        size_exact=exact,
        files=(WeightFile(f"whisper/{filename}", f"{base}/{sha256}/{filename}", nbytes, exact, sha256),),
    )


def _sam(variant: str, filename: str, nbytes: int, params: str) -> WeightSpec:
    return WeightSpec(
        name=f"sam_{variant}",
        kind="file",
        path=f"sam/{filename}",
        description=f"Segment Anything ViT-{variant[-1].upper()} ({params} image encoder), for the segmentation tools.",
        licence="Apache-2.0",
        source="https://github.com/facebookresearch/segment-anything#model-checkpoints",
        size_bytes=nbytes,
        size_exact=True,
        files=(
            WeightFile(
                f"sam/{filename}", f"https://dl.fbaipublicfiles.com/segment_anything/{filename}", nbytes, True
            ),
        ),
    )


def _diffusers(
    name: str, repo_id: str, description: str, licence: str, nbytes: int, source_note: str = ""
) -> WeightSpec:
    folder = repo_id.split("/")[-1]
    return WeightSpec(
        name=name,
        kind="hf-repo",
        path=f"diffusers/{folder}",
        description=description,
        licence=licence,
        source=f"https://huggingface.co/{repo_id}{source_note}",
        size_bytes=nbytes,
        repo_id=repo_id,
        # diffusers layout, fp32 safetensors only (no .ckpt / .bin / fp16 duplicates).
        allow_patterns=(
            "model_index.json",
            "*/config.json",
            "*_config.json",
            "tokenizer/*",
            "*/model.safetensors",
            "*/diffusion_pytorch_model.safetensors",
        ),
        required=("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"),
    )


_HF_IBLLM = "https://huggingface.co/Cxxs/ImageBind-LLM/resolve/main"


def _imagebind_llm(name: str, filename: str, gigabytes: float, description: str) -> WeightSpec:
    """One of the official ImageBind-LLM adapter checkpoints on the Cxxs/ImageBind-LLM Hub repo."""
    return WeightSpec(
        name=name,
        kind="file",
        path=f"imagebind_llm/{filename}",
        description=description,
        licence="non-commercial (derived from LLaMA and ImageBind); LLaMA-Adapter code GPL-3.0",
        source="https://huggingface.co/Cxxs/ImageBind-LLM",
        size_bytes=int(gigabytes * _GB),
        files=(WeightFile(f"imagebind_llm/{filename}", f"{_HF_IBLLM}/{filename}"),),
    )
_GB = 1_000_000_000

_LLAMA_HOW_TO = (
    "LLaMA-7B is Meta's gated research release. Request access at "
    "https://www.llama.com/llama-downloads/ (original LLaMA, Meta layout), then place the files as "
    "{weights_dir}/llama/7B/params.json, {weights_dir}/llama/7B/consolidated.00.pth and "
    "{weights_dir}/llama/tokenizer.model. Hugging Face-format copies must first be converted back to "
    "Meta layout (q/k un-permuted; README, section weights)."
)

_ENTRIES: tuple[WeightSpec, ...] = (
    # ---- ImageBind encoders --------------------------------------------------------------------
    WeightSpec(
        name="imagebind_huge",
        kind="file",
        path="imagebind/imagebind_huge.pth",
        description="Meta ImageBind-Huge: image/video, text, audio, depth, thermal, IMU encoders (no 3D).",
        licence="CC-BY-NC-4.0",
        source="https://github.com/facebookresearch/ImageBind",
        size_bytes=int(4.8 * _GB),
        files=(
            WeightFile(
                "imagebind/imagebind_huge.pth", "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
            ),
        ),
    ),
    WeightSpec(
        name="imagebind_w3d",
        kind="file",
        path="imagebind/imagebind_w3D.pth",
        description="ImageBind-Huge plus the Point-Bind 3D point-cloud encoder (the file ImageBind-LLM loads).",
        licence="CC-BY-NC-4.0 (ImageBind-derived)",
        source="https://huggingface.co/ZiyuG/ImageBind_w3D",
        size_bytes=int(4.89 * _GB),
        files=(
            WeightFile(
                "imagebind/imagebind_w3D.pth",
                "https://huggingface.co/ZiyuG/ImageBind_w3D/resolve/e9206a10f118b0790c730264e7b3aa5c324c35cb/imagebind_w3D.pth",
            ),
        ),
    ),
    # ---- ImageBind-LLM adapters ----------------------------------------------------------------
    _imagebind_llm("imagebind_llm_7b", "7B.pth", 2.6,
                   "ImageBind-LLM 7B (stable): bind network, gates, bias and LoRA over LLaMA-7B / Open-Chinese-LLaMA-7B."),
    _imagebind_llm("imagebind_llm_7b_pretrained", "7B-pretrained.pth", 2.43,
                   "ImageBind-LLM 7B after image-text pre-training only (bind network, prefix query, gates)."),
    _imagebind_llm("imagebind_llm_7b_beta", "7B-beta.pth", 2.6,
                   "ImageBind-LLM 7B beta: legacy LayerNorm+bias bridge (load with legacy_bridge=True)."),
    # ---- Base LLaMA ----------------------------------------------------------------------------
    WeightSpec(
        name="llama_7b",
        kind="manual",
        path="llama",
        description="LLaMA-7B in Meta layout: 7B/params.json, 7B/consolidated.00.pth (fp16), tokenizer.model.",
        licence="LLaMA non-commercial research licence (Meta)",
        source="https://github.com/meta-llama/llama",
        size_bytes=int(13.5 * _GB),
        files=(
            WeightFile("llama/7B/params.json"),
            WeightFile("llama/7B/consolidated.00.pth"),
            WeightFile("llama/tokenizer.model"),
        ),
        how_to_get=_LLAMA_HOW_TO,
    ),
    WeightSpec(
        name="open_chinese_llama_7b_delta",
        kind="file",
        path="llama/7B_chinese_delta",
        description="Open-Chinese-LLaMA-7B as a delta over LLaMA-7B (the base the stable 7B.pth was trained on); "
        "add it to llama_7b to get llama/7B_chinese.",
        licence="LLaMA licence applies (delta weights)",
        source="https://huggingface.co/Cxxs/Open-Chinese-LLaMA",
        size_bytes=int(13.5 * _GB),
        files=(
            WeightFile(
                "llama/7B_chinese_delta/consolidated.00.pth",
                "https://huggingface.co/Cxxs/Open-Chinese-LLaMA/resolve/main/7B_chinese_delta/consolidated.00.pth",
            ),
            WeightFile(
                "llama/7B_chinese_delta/params.json",
                "https://huggingface.co/Cxxs/Open-Chinese-LLaMA/resolve/main/7B_chinese_delta/params.json",
            ),
        ),
    ),
    # ---- Visual cache --------------------------------------------------------------------------
    WeightSpec(
        name="knn_index_cc3m",
        kind="file",
        path="knn/knn.index",
        description="FAISS index of ~3M CC3M ImageBind image features for the visual cache (13.3 GB).",
        licence="not stated by the uploader; features of Conceptual Captions (CC3M) images",
        source="https://huggingface.co/csuhan/knn",
        size_bytes=int(13.3 * _GB),
        files=(WeightFile("knn/knn.index", "https://huggingface.co/csuhan/knn/resolve/main/knn.index"),),
    ),
    # ---- Tools ---------------------------------------------------------------------------------
    WeightSpec(
        name="groundingdino_swint_ogc",
        kind="file",
        path="groundingdino/groundingdino_swint_ogc.pth",
        description="GroundingDINO Swin-T (OGC) open-set detector, plus its model config "
        "GroundingDINO_SwinT_OGC.py and the bert-base-uncased vocab.txt in the same folder.",
        licence="Apache-2.0",
        source="https://github.com/IDEA-Research/GroundingDINO/releases/tag/v0.1.0-alpha",
        size_bytes=693_997_677 + 1_006 + 231_508,
        files=(
            WeightFile(
                "groundingdino/groundingdino_swint_ogc.pth",
                "https://github.com/IDEA-Research/GroundingDINO/releases/download/v0.1.0-alpha/groundingdino_swint_ogc.pth",
                693_997_677,
                True,
            ),
            WeightFile(
                "groundingdino/GroundingDINO_SwinT_OGC.py",
                "https://raw.githubusercontent.com/IDEA-Research/GroundingDINO/main/groundingdino/config/GroundingDINO_SwinT_OGC.py",
            ),
            # The .pth holds the BERT weights but not the tokenizer vocabulary the text encoder needs.
            WeightFile(
                "groundingdino/bert-base-uncased-vocab.txt",
                "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt",
                231_508,
            ),
        ),
        extra={"config": "groundingdino/GroundingDINO_SwinT_OGC.py"},
    ),
    _sam("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879, "ViT-H, 636M"),
    _sam("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607, "ViT-L, 308M"),
    _sam("vit_b", "sam_vit_b_01ec64.pth", 375_042_383, "ViT-B, 91M"),
    _diffusers(
        "sd_inpainting",
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
        "Stable Diffusion 1.5 inpainting (diffusers layout), for the replace/remove-object tools.",
        "CreativeML OpenRAIL-M",
        int(5.5 * _GB),
        " (the maintained copy of runwayml/stable-diffusion-inpainting, which was taken down)",
    ),
    _diffusers(
        "sd15",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "Stable Diffusion 1.5 (diffusers layout), for the text-to-image tool.",
        "CreativeML OpenRAIL-M",
        int(5.2 * _GB),
        " (the maintained copy of runwayml/stable-diffusion-v1-5, which was taken down)",
    ),
    _diffusers(
        "sd21_unclip",
        "stabilityai/stable-diffusion-2-1-unclip",
        "Stable Diffusion 2.1 unCLIP (diffusers layout): images from ImageBind embeddings (any-to-image).",
        "CreativeML Open RAIL++-M",
        int(7.7 * _GB),
    ),
    _diffusers(
        "instruct_pix2pix",
        "timbrooks/instruct-pix2pix",
        "InstructPix2Pix (diffusers layout): edit an image from a text instruction.",
        "MIT",
        int(5.5 * _GB),
    ),
    _whisper(
        "tiny",
        "tiny.pt",
        "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
        75_572_083,
        True,
    ),
    _whisper(
        "base",
        "base.pt",
        "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e",
        145_262_807,
        True,
    ),
    _whisper(
        "small",
        "small.pt",
        "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794",
        483_617_219,
        True,
    ),
    _whisper(
        "medium",
        "medium.pt",
        "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1",
        1_528_008_539,
        True,
    ),
    _whisper(
        "large-v3",
        "large-v3.pt",
        "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb",
        3_087_371_615,
        True,
    ),
    _whisper(
        "turbo",
        "large-v3-turbo.pt",
        "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a",
        int(1.6 * _GB),
        False,
    ),
)

WEIGHTS: dict[str, WeightSpec] = {spec.name: spec for spec in _ENTRIES}


def get_spec(name: str) -> WeightSpec:
    """The registry entry ``name``; ``UnknownWeightError`` (listing the known names) otherwise."""
    try:
        return WEIGHTS[name]
    except KeyError:
        raise UnknownWeightError(f"unknown weight {name!r}; known weights: {', '.join(WEIGHTS)}") from None


def _weights_dir(settings: Settings | None) -> Path:
    if settings is None:
        from ibllm_agent.config import get_settings

        settings = get_settings()
    return settings.weights_dir


def weights_path(name: str, settings: Settings | None = None) -> Path:
    """Where entry ``name`` lives (file or folder, see ``WeightSpec.path``); it may not exist yet."""
    return _weights_dir(settings) / get_spec(name).path


def missing_files(name: str, settings: Settings | None = None) -> list[Path]:
    """The entry's required files that are not on disk (empty when the entry is complete)."""
    root = _weights_dir(settings)
    return [root / rel for rel in get_spec(name).required_paths() if not (root / rel).is_file()]


def how_to_get(spec: WeightSpec, settings: Settings | None = None) -> str:
    """Instructions for a manual entry, with the actual weights dir filled in."""
    return (spec.how_to_get or f"see {spec.source}").replace("{weights_dir}", str(_weights_dir(settings)))


def require(name: str, settings: Settings | None = None) -> Path:
    """Path of entry ``name`` when all its files are present.

    Raises ``MissingWeightError`` naming the first missing file and the ``ibllm-agent download NAME``
    command (``ManualWeightMissingError`` with instructions for gated entries such as ``llama_7b``).
    """
    spec = get_spec(name)
    missing = missing_files(name, settings)
    if missing:
        if spec.kind == "manual":
            raise ManualWeightMissingError(name, str(missing[0]), how_to_get(spec, settings))
        others = (
            f"{len(missing) - 1} more file(s) of this entry are missing too" if len(missing) > 1 else None
        )
        raise MissingWeightError(name, str(missing[0]), others)
    return weights_path(name, settings)


@dataclass(frozen=True)
class WeightStatus:
    """One row of ``ibllm-agent info``: is the entry on disk, where, and how big."""

    name: str
    kind: Kind
    present: bool
    path: Path
    missing: tuple[Path, ...]
    size_on_disk: int
    size_bytes: int | None
    licence: str
    description: str
    partial_bytes: int = 0  # bytes in unfinished ``*.part`` downloads (resumed by ``download``)


def _is_download_state(rel: Path) -> bool:
    """Download bookkeeping, not weights (``rel`` is relative to the entry's folder): an unfinished
    download of ``download.py`` (the data, its version note, its lock) or ``huggingface_hub``'s
    per-folder metadata and staging (``.cache/``)."""
    return rel.name.endswith((".part", ".part.meta", ".part.lock")) or ".cache" in rel.parts


def _part_size(root: Path, spec: WeightSpec) -> int:
    if spec.kind == "hf-repo":
        folder = root / spec.path
        return sum(p.stat().st_size for p in folder.rglob("*.part") if p.is_file()) if folder.is_dir() else 0
    parts = (root / (f.path + ".part") for f in spec.files)
    return sum(p.stat().st_size for p in parts if p.is_file())


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(
            p.stat().st_size for p in path.rglob("*") if p.is_file() and not _is_download_state(p.relative_to(path))
        )
    return 0


def status(settings: Settings | None = None) -> list[WeightStatus]:
    """Presence of every registry entry in the weights dir (no network, no model code)."""
    root = _weights_dir(settings)
    rows = []
    for spec in WEIGHTS.values():
        missing = tuple(root / rel for rel in spec.required_paths() if not (root / rel).is_file())
        on_disk = (
            sum(_disk_size(root / f.path) for f in spec.files) if spec.files else _disk_size(root / spec.path)
        )
        rows.append(
            WeightStatus(
                name=spec.name,
                kind=spec.kind,
                present=not missing,
                path=root / spec.path,
                missing=missing,
                size_on_disk=on_disk,
                size_bytes=spec.size_bytes,
                licence=spec.licence,
                description=spec.description,
                partial_bytes=_part_size(root, spec),
            )
        )
    return rows
