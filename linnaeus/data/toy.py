"""A small taxonomic image dataset, generated deterministically on first use.

Three levels: family (round / angular) → genus (the shape) → species (the shape's shade or
pattern)::

    round:   circle, ellipse, ring         angular: triangle, square, star
    species: <genus>_light, <genus>_dark, <genus>_striped        (18 species)

As in real taxa, relatives share colouring: each genus has its own hue (round genera warm,
angular genera cool, see ``GENUS_HUES``), so a genus is told apart by its shape *and* its
hue, and a species by its shade or stripes on top of that. The hue is what lets the demo's
small ConvNeXt → ViT learn every level within a couple of CPU minutes: a ConvNeXt trained
from scratch picks up colour within a few hundred steps but needs far more to separate
randomly rotated shapes (measured while building this; a BatchNorm CNN learns the shapes
faster). Hue jitter is wide enough that neighbouring genera overlap a little, so accuracy
is high but not trivially perfect.

Position, size, rotation, colour jitter and background noise are random per image. Image
``i`` is drawn from its own generator seeded with ``(seed, i)``, so the bytes do not depend
on generation order.

The dataset is written once into ``root/<species>/<i>.png`` plus ``root/taxonomy.json``.
Concurrent callers (all ranks of a job, several jobs on one machine) serialise on a file
lock; the winner writes into a temporary sibling folder and renames it onto ``root`` in
one atomic step, with a completion marker written last, so a partial dataset is never
visible under ``root`` (a process killed mid-way leaves only a temp folder, cleaned up by
the next generator).
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw

from .taxonomy import DatasetError

GENERATOR_VERSION = 2  # bump whenever the images change; a dataset of another version is refused
MARKER = ".toy_complete.json"

FAMILIES: dict[str, tuple[str, ...]] = {
    "round": ("circle", "ellipse", "ring"),
    "angular": ("triangle", "square", "star"),
}
VARIANTS = ("light", "dark", "striped")

# Centre hue (degrees) of each genus; every image jitters it by _HUE_JITTER (1 sigma)
GENUS_HUES = {"circle": 350.0, "ellipse": 28.0, "ring": 62.0, "triangle": 170.0, "square": 210.0, "star": 250.0}
_HUE_JITTER = 9.0
# (saturation range, value range) of the two shades; stripes alternate them
_SHADES = {"light": ((0.40, 0.60), (0.85, 1.00)), "dark": ((0.75, 0.95), (0.35, 0.50))}
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


def _shade(hue: float, shade: str, rng: np.random.Generator) -> np.ndarray:
    """RGB (0-255) of ``hue`` (degrees) in the ``"light"`` or ``"dark"`` shade, jittered."""
    (s_lo, s_hi), (v_lo, v_hi) = _SHADES[shade]
    rgb = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi))
    return np.array(rgb) * 255.0


def _foreground(genus: str, variant: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float RGB texture of a species: its genus hue in its variant's shade or stripes."""
    hue = GENUS_HUES[genus] + rng.normal(0.0, _HUE_JITTER)
    if variant != "striped":
        return np.broadcast_to(_shade(hue, variant, rng), (size, size, 3)).astype(np.float32)
    phi = rng.uniform(0.0, np.pi)
    period = size * rng.uniform(0.10, 0.16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = (xx * np.cos(phi) + yy * np.sin(phi)) / period + rng.uniform(0.0, 1.0)
    on = ((phase % 1.0) < 0.5)[..., None]
    return np.where(on, _shade(hue, "light", rng), _shade(hue, "dark", rng)).astype(np.float32)


def render_toy_image(species: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size``×``size`` uint8 RGB image of ``species`` (e.g. ``"ring_striped"``)."""
    genus, variant = species.rsplit("_", 1)
    # low-saturation background with per-pixel noise, so colour alone does not segment the shape
    grey = rng.uniform(70, 190)
    background = grey + rng.normal(0, 12, 3) + rng.normal(0, 20, (size, size, 3))
    mask = _shape_mask(genus, size, rng)
    fg = _foreground(genus, variant, size, rng) + rng.normal(0, 10, (size, size, 3))
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
        if found != params and found.get("generator_version") != params["generator_version"]:
            raise DatasetError(
                f"{root} holds a toy dataset from toy generator version {found.get('generator_version')}; "
                f"this linnaeus draws version {params['generator_version']} (different images). Delete "
                "the folder to regenerate it, or point DATA.ROOT elsewhere."
            )
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
