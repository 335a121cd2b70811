"""A small taxonomic image dataset, generated deterministically on first use.

Three levels: family (round / angular) → genus (the shape) → species (the shape's colour or
texture variant)::

    round:   circle, ellipse, ring         angular: triangle, square, star
    species: <genus>_red, <genus>_blue, <genus>_striped          (18 species)

Position, size, rotation, colour jitter and background noise are random per image, so a
model has to learn shape *and* appearance; a small CNN gets well above chance in a
couple of epochs. Image ``i`` is drawn from its own generator seeded with ``(seed, i)``,
so the bytes do not depend on generation order.

The dataset is written once into ``root/<species>/<i>.png`` plus ``root/taxonomy.json``.
Concurrent callers (all ranks of a job, several jobs on one machine) serialise on a file
lock; the winner writes into a temporary sibling folder and renames it onto ``root`` in
one atomic step, with a completion marker written last, so a partial dataset is never
visible under ``root`` (a process killed mid-way leaves only a temp folder, cleaned up by
the next generator).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw

from .taxonomy import DatasetError

GENERATOR_VERSION = 1
MARKER = ".toy_complete.json"

FAMILIES: dict[str, tuple[str, ...]] = {
    "round": ("circle", "ellipse", "ring"),
    "angular": ("triangle", "square", "star"),
}
VARIANTS = ("red", "blue", "striped")

# RGB centre colours of each variant; every image jitters them
_SOLID = {"red": (215, 45, 40), "blue": (40, 85, 215)}
_STRIPES = ((235, 205, 30), (40, 30, 60))
_SUPERSAMPLE = 3  # shape masks are drawn larger and downsampled for anti-aliased edges


def toy_taxonomy() -> dict[str, dict[str, str]]:
    """``{species: {"genus": ..., "family": ...}}`` for the toy dataset."""
    return {
        f"{genus}_{variant}": {"genus": genus, "family": family}
        for family, genera in FAMILIES.items()
        for genus in genera
        for variant in VARIANTS
    }


def _polygon(cx: float, cy: float, radii: np.ndarray, rot: float) -> list[tuple[float, float]]:
    angles = rot + np.linspace(0.0, 2 * np.pi, len(radii), endpoint=False)
    return list(zip((cx + radii * np.cos(angles)).tolist(), (cy + radii * np.sin(angles)).tolist()))


def _shape_mask(genus: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float mask in [0, 1] of one randomly placed, sized and rotated shape."""
    big = size * _SUPERSAMPLE
    r = rng.uniform(0.20, 0.34) * big
    cx, cy = rng.uniform(0.5 * big - 0.18 * big, 0.5 * big + 0.18 * big, size=2)
    rot = rng.uniform(0.0, 2 * np.pi)
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    if genus == "circle":
        draw.polygon(_polygon(cx, cy, np.full(64, r), rot), fill=255)
    elif genus == "ellipse":
        t = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
        a, b = r * 1.15, r * 1.15 * rng.uniform(0.42, 0.58)
        x, y = a * np.cos(t), b * np.sin(t)
        c, s = np.cos(rot), np.sin(rot)
        draw.polygon(list(zip((cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist())), fill=255)
    elif genus == "ring":
        draw.polygon(_polygon(cx, cy, np.full(64, r), rot), fill=255)
        draw.polygon(_polygon(cx, cy, np.full(64, r * rng.uniform(0.45, 0.6)), rot), fill=0)
    elif genus == "triangle":
        draw.polygon(_polygon(cx, cy, np.full(3, r * 1.15), rot), fill=255)
    elif genus == "square":
        draw.polygon(_polygon(cx, cy, np.full(4, r * 1.05), rot), fill=255)
    elif genus == "star":
        draw.polygon(_polygon(cx, cy, np.tile([r * 1.2, r * 0.5], 5), rot), fill=255)
    else:
        raise ValueError(f"unknown toy genus {genus!r}")
    small = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0


def _foreground(variant: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float RGB texture of a species' variant, with colour jitter."""
    if variant in _SOLID:
        colour = np.clip(np.array(_SOLID[variant]) + rng.normal(0, 22, 3), 0, 255)
        return np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    phi = rng.uniform(0.0, np.pi)
    period = size * rng.uniform(0.10, 0.16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = (xx * np.cos(phi) + yy * np.sin(phi)) / period + rng.uniform(0.0, 1.0)
    on = ((phase % 1.0) < 0.5)[..., None]
    light = np.clip(np.array(_STRIPES[0]) + rng.normal(0, 18, 3), 0, 255)
    dark = np.clip(np.array(_STRIPES[1]) + rng.normal(0, 18, 3), 0, 255)
    return np.where(on, light, dark).astype(np.float32)


def render_toy_image(species: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size``×``size`` uint8 RGB image of ``species`` (e.g. ``"ring_striped"``)."""
    genus, variant = species.rsplit("_", 1)
    # low-saturation background with per-pixel noise, so colour alone does not segment the shape
    grey = rng.uniform(70, 190)
    background = grey + rng.normal(0, 12, 3) + rng.normal(0, 20, (size, size, 3))
    mask = _shape_mask(genus, size, rng)
    fg = _foreground(variant, size, rng) + rng.normal(0, 10, (size, size, 3))
    return np.clip(background * (1 - mask) + fg * mask, 0, 255).round().astype(np.uint8)


def _generate(out: Path, num_samples: int, img_size: int, seed: int) -> None:
    taxonomy = toy_taxonomy()
    species = sorted(taxonomy)
    for name in species:
        (out / name).mkdir()
    for i in range(num_samples):
        name = species[i % len(species)]  # balanced classes
        rng = np.random.default_rng([seed, i])
        Image.fromarray(render_toy_image(name, img_size, rng)).save(out / name / f"{i:05d}.png", format="PNG")
    (out / "taxonomy.json").write_text(json.dumps(taxonomy, indent=1, sort_keys=True) + "\n")


def _params(num_samples: int, img_size: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_samples": num_samples, "img_size": img_size, "seed": seed}


def _is_complete(root: Path, params: dict) -> bool:
    """True if ``root`` holds the requested dataset; False if absent/empty; error otherwise."""
    marker = root / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != params:
            raise DatasetError(
                f"{root} holds a toy dataset generated with {found}, but {params} was requested "
                "(DATA.TOY_NUM_SAMPLES / DATA.IMG_SIZE changed?). Delete the folder to regenerate it, "
                "or point DATA.ROOT elsewhere."
            )
        return True
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(
            f"{root} exists but is not a complete toy dataset (no {MARKER}). Point DATA.ROOT at an "
            "empty or missing folder for the toy dataset, or use DATA.DATASET imagefolder for your own data."
        )
    return False


def ensure_toy_dataset(
    root: str | os.PathLike, num_samples: int = 2400, img_size: int = 64, seed: int = 0
) -> Path:
    """Generate the toy dataset into ``root`` unless it is already there; returns ``root``.

    Safe to call from every rank and from several jobs at once: exactly one caller
    generates, the others wait on the lock and then find the completed dataset.
    """
    if num_samples < len(toy_taxonomy()):
        raise DatasetError(
            f"DATA.TOY_NUM_SAMPLES={num_samples} is too small: the toy dataset has "
            f"{len(toy_taxonomy())} species and needs at least one image of each."
        )
    root = Path(os.path.expanduser(root)).absolute()
    params = _params(int(num_samples), int(img_size), int(seed))
    if _is_complete(root, params):  # fast path: no lock once the dataset exists
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        if _is_complete(root, params):
            return root
        # only the lock holder writes, so any temp folder left now is from a killed generator
        for stale in root.parent.glob(f".{root.name}.tmp-*"):
            shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            _generate(tmp, params["num_samples"], params["img_size"], params["seed"])
            (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is shared by users and jobs
            os.rename(tmp, root)  # atomic; also replaces an empty placeholder folder
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # best-effort cleanup; the original error propagates
            raise
    return root
