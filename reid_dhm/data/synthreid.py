"""synthreid: an embedded, procedurally generated re-ID data set in the Market-1501 layout.

Nothing is downloaded: the images are drawn on first use (seconds) and cached on
disk, deterministically for a given seed and size. It is a real retrieval task,
built so that colour statistics alone do not solve it:

* **Identities** combine a few shared clothing colours (many identities wear the
  same top and trouser colours) with what a colour histogram cannot see: a garment
  pattern drawn in a shade of the garment's own colour (plain, horizontal stripes,
  vertical stripes, checks, a chest band), body shape (height, build), hair
  length, hat, bag side and shoe colour.
* **Cameras** each have their own illumination (colour cast, brightness, contrast),
  background (floor and wall colours, texture, clutter) and preferred viewpoints
  (front, back, left, right: bags and faces appear only from some sides).
* **Per image**: walking pose, scale and position jitter, sensor noise, and partial
  occlusion by a random foreground object in some images.

Layout (as Market-1501): ``bounding_box_train/``, ``bounding_box_test/`` (gallery,
with distractors of pid 0 and junk of pid -1) and ``query/`` (one image per test
identity per camera), file names ``{pid:04d}_c{cam}s1_{frame:06d}_00.jpg``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FORMAT_VERSION = 5  # bump whenever rendering changes: cached builds are redrawn
MARKER = "synthreid.json"

# Clothing colours shared across identities (RGB); few on purpose.
PALETTE = np.array(
    [
        (200, 40, 40),  # red
        (40, 70, 170),  # blue
        (40, 130, 60),  # green
        (225, 200, 60),  # yellow
        (235, 235, 230),  # white
        (45, 45, 50),  # black
        (130, 130, 135),  # grey
        (120, 80, 50),  # brown
    ],
    dtype=np.float32,
)
SKIN = np.array([(240, 200, 170), (200, 150, 110), (140, 95, 60), (90, 60, 40)], np.float32)
HAIR = np.array([(30, 25, 20), (90, 60, 30), (200, 170, 100), (150, 150, 150)], np.float32)
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "band")
VIEWS = ("front", "back", "left", "right")


@dataclass(frozen=True)
class SynthReIDSpec:
    """Size of a synthreid build; the defaults train in minutes on 2 CPU cores."""

    num_train_ids: int = 100
    num_test_ids: int = 100
    num_cameras: int = 4
    images_per_camera: tuple[int, int] = (2, 4)  # min, max images of an id in one camera
    cameras_per_id: tuple[int, int] = (2, 4)
    num_distractors: int = 60
    num_junk: int = 20
    height: int = 128
    width: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Identity:
    top: int
    bottom: int
    pattern: str
    shoe: int
    skin: int
    hair: int
    long_hair: bool
    hat: int  # -1: none, else palette index
    bag: str  # none | left | right | back
    height: float  # fraction of the image height
    build: float  # torso width factor


@dataclass(frozen=True)
class Camera:
    gain: tuple[float, float, float]
    brightness: float
    contrast: float
    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    horizon: float
    texture: str  # tiles | stripes | noise
    views: tuple[float, float, float, float]  # probability of each view


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([abs(int(k)) for k in key])


def sample_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        top=int(rng.integers(len(PALETTE))),
        bottom=int(rng.integers(len(PALETTE))),
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        shoe=int(rng.integers(len(PALETTE))),
        skin=int(rng.integers(len(SKIN))),
        hair=int(rng.integers(len(HAIR))),
        long_hair=bool(rng.random() < 0.35),
        hat=int(rng.integers(len(PALETTE))) if rng.random() < 0.25 else -1,
        bag=("none", "left", "right", "back")[int(rng.integers(4))],
        height=float(rng.uniform(0.78, 0.93)),
        build=float(rng.uniform(0.8, 1.25)),
    )


def _muted(rng: np.random.Generator, saturation: float = 0.3) -> tuple[int, int, int]:
    """A greyish colour: real backgrounds are far less saturated than clothes."""
    grey = rng.uniform(50, 210)
    tint = rng.uniform(-1, 1, size=3) * grey * saturation
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))


def sample_camera(rng: np.random.Generator) -> Camera:
    views = rng.dirichlet(np.full(4, 0.7))
    return Camera(
        gain=tuple(float(g) for g in rng.uniform(0.85, 1.15, size=3)),
        brightness=float(rng.uniform(-20, 20)),
        contrast=float(rng.uniform(0.8, 1.1)),
        wall=_muted(rng),
        floor=_muted(rng),
        horizon=float(rng.uniform(0.45, 0.7)),
        texture=("tiles", "stripes", "noise")[int(rng.integers(3))],
        views=tuple(float(v) for v in views),
    )


def _shade(colour: np.ndarray, factor: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(colour * factor, 0, 255))


def _jitter(colour, rng: np.random.Generator, amount: float) -> tuple[int, int, int]:
    shifted = np.asarray(colour, np.float32) + rng.uniform(-amount, amount, size=3)
    return tuple(int(v) for v in np.clip(shifted, 0, 255))


def _background(cam: Camera, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    # Each shot varies around the camera's scene: lighting drifts, people stand nearer
    # or farther (horizon), so a camera is recognisable but not a constant backdrop.
    wall = _jitter(cam.wall, rng, 25)
    floor = _jitter(cam.floor, rng, 25)
    img = Image.new("RGB", (w, h), wall)
    draw = ImageDraw.Draw(img)
    y0 = int(h * (cam.horizon + rng.uniform(-0.08, 0.08)))
    draw.rectangle([0, y0, w, h], fill=floor)
    dark = tuple(max(0, c - 35) for c in floor)
    if cam.texture == "tiles":
        step = max(6, w // 5)
        for x in range(-int(rng.integers(step)), w, step):
            draw.line([x, y0, x + (x - w // 2) // 2, h], fill=dark, width=1)
        for y in range(y0, h, step // 2 + 1):
            draw.line([0, y, w, y], fill=dark, width=1)
    elif cam.texture == "stripes":
        for y in range(y0, h, 5):
            draw.line([0, y, w, y], fill=dark, width=2)
    # clutter on the wall (doors, posters, windows) at random places
    for _ in range(int(rng.integers(1, 4))):
        cw, ch = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 10, h // 3))
        cx, cy = int(rng.integers(-cw // 2, w)), int(rng.integers(0, max(1, y0 - ch // 2)))
        draw.rectangle([cx, cy, cx + cw, cy + ch], fill=_muted(rng, 0.6))
    arr = np.asarray(img, dtype=np.float32)
    if cam.texture == "noise":
        arr = arr + rng.normal(0, 12, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _draw_pattern(draw, box, base: np.ndarray, pattern: str, scale: float) -> None:
    x0, y0, x1, y1 = box
    shade = _shade(base, 0.62 if base.mean() > 90 else 1.9)
    step = max(3, int(5 * scale))
    if pattern == "hstripes":
        for y in range(int(y0), int(y1), 2 * step):
            draw.rectangle([x0, y, x1, min(y1, y + step - 1)], fill=shade)
    elif pattern == "vstripes":
        for x in range(int(x0), int(x1), 2 * step):
            draw.rectangle([x, y0, min(x1, x + step - 1), y1], fill=shade)
    elif pattern == "checks":
        for i, y in enumerate(range(int(y0), int(y1), step)):
            for j, x in enumerate(range(int(x0), int(x1), step)):
                if (i + j) % 2:
                    draw.rectangle([x, y, min(x1, x + step - 1), min(y1, y + step - 1)], fill=shade)
    elif pattern == "band":
        mid = y0 + (y1 - y0) * 0.35
        draw.rectangle([x0, mid, x1, mid + (y1 - y0) * 0.22], fill=shade)


@dataclass(frozen=True)
class _Pose:
    """Where one drawn person's parts go on the canvas (working resolution, pixels)."""

    cx: float  # body centre line
    top: float  # top of the head
    feet: float  # bottom of the shoes
    total: float  # body height
    head_h: float
    torso_h: float
    t0: float  # top of the torso
    half: float  # half the torso width
    side: bool  # seen from the left or right
    stride: float  # walking phase in [-0.45, 0.45]


def _pose(w: int, h: int, ident: Identity, view: str, rng: np.random.Generator) -> _Pose:
    """The person's jittered geometry; the only random draws of :func:`_draw_person`."""
    s = ident.height * rng.uniform(0.93, 1.05)  # scale jitter
    total = h * s
    cx = w / 2 + rng.normal(0, w * 0.04)
    feet = h * rng.uniform(0.95, 0.995)
    top = feet - total
    head_h = total * 0.13
    side = view in ("left", "right")
    return _Pose(
        cx=cx,
        top=top,
        feet=feet,
        total=total,
        head_h=head_h,
        torso_h=total * 0.33,
        t0=top + head_h + total * 0.03,
        half=w * 0.3 * ident.build * (0.7 if side else 1.0),
        side=side,
        stride=rng.uniform(-0.45, 0.45),  # walking phase
    )


def _draw_legs(draw: ImageDraw.ImageDraw, ident: Identity, view: str, p: _Pose) -> None:
    leg_top = p.t0 + p.torso_h
    leg_w = p.half * 0.62
    for sign in (-1, 1):
        off = sign * (p.half * 0.42) + (p.stride * sign * leg_w * (1.5 if p.side else 0.6))
        x = p.cx + off
        draw.rectangle(
            [x - leg_w / 2, leg_top, x + leg_w / 2, p.feet - p.total * 0.03],
            fill=_shade(PALETTE[ident.bottom], 1),
        )
        shoe = _shade(PALETTE[ident.shoe], 1)
        draw.rectangle(
            [
                x - leg_w / 2 - 1,
                p.feet - p.total * 0.035,
                x + leg_w / 2 + (3 if view == "right" else 1),
                p.feet,
            ],
            fill=shoe,
        )


def _draw_arms(draw: ImageDraw.ImageDraw, ident: Identity, view: str, p: _Pose) -> None:
    arm_w = p.half * 0.32
    for sign in (-1, 1):
        if p.side and sign == (1 if view == "left" else -1):
            continue  # the far arm is hidden from the side
        ax = p.cx + sign * (p.half + arm_w / 2) if not p.side else p.cx + p.stride * p.half
        swing = -sign * p.stride * arm_w * 2
        draw.polygon(
            [
                (ax - arm_w / 2, p.t0 + 2),
                (ax + arm_w / 2, p.t0 + 2),
                (ax + arm_w / 2 + swing, p.t0 + p.torso_h * 0.95),
                (ax - arm_w / 2 + swing, p.t0 + p.torso_h * 0.95),
            ],
            fill=_shade(PALETTE[ident.top], 0.85),
        )
        hand_y = p.t0 + p.torso_h * 0.95
        draw.ellipse(
            [ax + swing - arm_w / 2, hand_y - 2, ax + swing + arm_w / 2, hand_y + arm_w],
            fill=_shade(SKIN[ident.skin], 1),
        )


def _draw_bag(draw: ImageDraw.ImageDraw, ident: Identity, view: str, p: _Pose) -> None:
    """A backpack is seen from behind or the side; a shoulder bag from its side."""
    cx, half, t0, torso_h = p.cx, p.half, p.t0, p.torso_h
    if ident.bag == "back" and view != "front":
        bx = cx if view == "back" else cx + (-1 if view == "right" else 1) * half * 1.1
        draw.rectangle(
            [bx - half * 0.7, t0 + torso_h * 0.1, bx + half * 0.7, t0 + torso_h * 0.8],
            fill=(70, 55, 40),
        )
    elif ident.bag in ("left", "right"):
        sgn = -1 if ident.bag == "left" else 1
        if view in ("front", "back") or (view == "left") == (ident.bag == "left"):
            bx = cx + sgn * (half + half * 0.32) * (1 if view != "back" else -1)
            draw.rectangle(
                [bx - half * 0.35, t0 + torso_h * 0.55, bx + half * 0.35, t0 + torso_h * 1.05],
                fill=(60, 40, 30),
            )
            draw.line(
                [cx - sgn * half * 0.6, t0, bx, t0 + torso_h * 0.55], fill=(60, 40, 30), width=2
            )


def _draw_head(draw: ImageDraw.ImageDraw, ident: Identity, view: str, p: _Pose) -> None:
    """Head, hair (long hair frames the face) and hat."""
    cx, head_h = p.cx, p.head_h
    skin = SKIN[ident.skin]
    hw = head_h * 0.45
    hy0 = p.top + (p.total * 0.01)
    draw.ellipse([cx - hw, hy0, cx + hw, hy0 + head_h], fill=_shade(skin, 1))
    hair_c = _shade(HAIR[ident.hair], 1)
    if view == "back":
        draw.ellipse([cx - hw, hy0, cx + hw, hy0 + head_h], fill=hair_c)
    else:
        draw.chord([cx - hw, hy0, cx + hw, hy0 + head_h * 0.8], 180, 360, fill=hair_c)
    if ident.long_hair:
        draw.rectangle([cx - hw, hy0 + head_h * 0.4, cx + hw, hy0 + head_h * 1.5], fill=hair_c)
        if view != "back":
            draw.ellipse(
                [cx - hw * 0.75, hy0 + head_h * 0.25, cx + hw * 0.75, hy0 + head_h * 0.95],
                fill=_shade(skin, 1),
            )
    if ident.hat >= 0:
        draw.rectangle(
            [cx - hw * 1.15, hy0 - head_h * 0.1, cx + hw * 1.15, hy0 + head_h * 0.3],
            fill=_shade(PALETTE[ident.hat], 1),
        )


def _draw_person(canvas: Image.Image, ident: Identity, view: str, rng: np.random.Generator):
    """Draw one person onto ``canvas`` (the working resolution is 2x the output)."""
    w, h = canvas.size
    draw = ImageDraw.Draw(canvas)
    pose = _pose(w, h, ident, view, rng)
    _draw_legs(draw, ident, view, pose)
    # torso with its pattern
    top_c = PALETTE[ident.top]
    torso = [pose.cx - pose.half, pose.t0, pose.cx + pose.half, pose.t0 + pose.torso_h]
    draw.rectangle(torso, fill=_shade(top_c, 1))
    _draw_pattern(draw, torso, top_c, ident.pattern, w / 64)
    _draw_arms(draw, ident, view, pose)
    _draw_bag(draw, ident, view, pose)
    _draw_head(draw, ident, view, pose)


def render(
    ident: Identity, cam: Camera, seed_key: tuple[int, ...], size: tuple[int, int]
) -> Image.Image:
    """One image of ``ident`` seen by ``cam``; ``seed_key`` makes it reproducible."""
    rng = _rng(*seed_key)
    h, w = size
    W, H = 2 * w, 2 * h  # draw at 2x, then downsample: anti-aliased edges
    canvas = _background(cam, rng, W, H)
    view = VIEWS[int(rng.choice(4, p=np.asarray(cam.views) / sum(cam.views)))]
    _draw_person(canvas, ident, view, rng)
    if rng.random() < 0.3:  # partial occlusion by a foreground object
        draw = ImageDraw.Draw(canvas)
        ow, oh = int(W * rng.uniform(0.3, 0.7)), int(H * rng.uniform(0.15, 0.4))
        ox = int(rng.integers(-ow // 3, W - ow // 2))
        oy = (
            int(H - oh * rng.uniform(0.6, 1.0))
            if rng.random() < 0.7
            else int(rng.integers(0, H - oh))
        )
        draw.rectangle([ox, oy, ox + ow, oy + oh], fill=_muted(rng, 0.8))
    img = canvas.resize((w, h), Image.BILINEAR).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.0, 0.6))
    )
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - 128) * cam.contrast + 128 + cam.brightness
    arr = arr * np.asarray(cam.gain, np.float32)
    arr = arr + rng.normal(0, 4, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _plan(spec: SynthReIDSpec):
    """Yield (split, pid, cam, identity) for every image, deterministically."""
    cams = [sample_camera(_rng(spec.seed, 1, c)) for c in range(spec.num_cameras)]
    num_ids = spec.num_train_ids + spec.num_test_ids
    frame = 0
    for pid in range(1, num_ids + 1):
        rng = _rng(spec.seed, 2, pid)
        ident = sample_identity(rng)
        n_cams = int(rng.integers(spec.cameras_per_id[0], spec.cameras_per_id[1] + 1))
        n_cams = min(n_cams, spec.num_cameras)
        chosen = sorted(int(c) for c in rng.choice(spec.num_cameras, n_cams, replace=False))
        train = pid <= spec.num_train_ids
        for cam in chosen:
            n_img = int(rng.integers(spec.images_per_camera[0], spec.images_per_camera[1] + 1))
            for k in range(n_img):
                frame += 1
                if train:
                    split = "bounding_box_train"
                else:
                    split = "query" if k == 0 else "bounding_box_test"
                yield split, pid, cam, frame, ident, cams[cam]
    # distractors (pid 0) and junk (pid -1) go to the gallery only
    for j in range(spec.num_distractors + spec.num_junk):
        rng = _rng(spec.seed, 3, j)
        frame += 1
        cam = int(rng.integers(spec.num_cameras))
        pid = 0 if j < spec.num_distractors else -1
        yield "bounding_box_test", pid, cam, frame, sample_identity(rng), cams[cam]


def _announce(line: str) -> None:
    print(line, flush=True)


def generate_synthreid(
    root: str | os.PathLike,
    spec: SynthReIDSpec | None = None,
    log: Callable[[str], object] | None = _announce,
) -> Path:
    """Write synthreid under ``root/synthreid`` unless an identical build is there.

    The build goes to a temporary folder and is renamed into place at the end, so an
    interrupted run never leaves a half-written data set behind. A build is announced
    in one line through ``log`` (default: stdout; None: silent).

    Returns:
        The data set folder (it holds ``bounding_box_train``, ``bounding_box_test``, ``query``).
    """
    from filelock import FileLock

    spec = spec or SynthReIDSpec()
    dest = Path(root).expanduser().resolve() / "synthreid"
    wanted = {"format": FORMAT_VERSION, **asdict(spec)}
    wanted = json.loads(json.dumps(wanted))  # tuples -> lists, as read back
    if _is_built(dest, wanted):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Runs started side by side (a study's trials) must not build it twice: the second
    # build would delete the folder the first run is already reading.
    with FileLock(str(dest.parent / ".synthreid.lock")):
        if not _is_built(dest, wanted):
            if log is not None:
                log(
                    f"=> drawing synthreid ({spec.num_train_ids} + {spec.num_test_ids} ids, "
                    f"{spec.num_cameras} cameras) into {dest}; later runs reuse it"
                )
            _build(dest, spec, wanted)
    return dest


def _is_built(dest: Path, wanted: dict) -> bool:
    """Whether ``dest`` holds a finished build of ``wanted``."""
    try:
        return json.loads((dest / MARKER).read_text()) == wanted
    except (OSError, ValueError):
        return False


def _build(dest: Path, spec: SynthReIDSpec, wanted: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".synthreid-", dir=dest.parent))
    try:
        for split in ("bounding_box_train", "bounding_box_test", "query"):
            (tmp / split).mkdir()
        for split, pid, cam, frame, ident, camera in _plan(spec):
            img = render(ident, camera, (spec.seed, 4, frame), (spec.height, spec.width))
            name = (
                f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg"
                if pid >= 0
                else f"-1_c{cam + 1}s1_{frame:06d}_00.jpg"
            )
            img.save(tmp / split / name, quality=92)
        (tmp / MARKER).write_text(json.dumps(wanted, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
