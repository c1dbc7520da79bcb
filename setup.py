"""Installable package for reid-dhm (``pip install -e .``)."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _version() -> str:
    for line in (ROOT / "reid_dhm" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("reid_dhm/__init__.py has no __version__")


setup(
    name="reid-dhm",
    version=_version(),
    description="Person re-identification with Dynamic Hierarchical Mimicking (DHM)",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["reid_dhm", "reid_dhm.*"]),
    entry_points={"console_scripts": ["reid-dhm = reid_dhm.cli:main"]},
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "torchreid==0.2.5",
        # torchreid 0.2.5 declares no dependencies; these are the ones it imports.
        "numpy",
        "scipy",
        "Pillow",
        # 4.x: BoxMOT needs opencv-python < 5, and 5.x has no cv2.HOGDescriptor (tracking example)
        "opencv-python>=4.8,<5",
        "tensorboard",
        "gdown",
        # faiss-gpu's wheel also runs CPU indexes on machines without a GPU.
        "faiss-gpu==1.15.1",
        "pyyaml",
        # the config schema (reid_dhm/config/schema.py): typed sections, ranges, closed keys
        "pydantic>=2.14,<3",
        "tqdm",
        "matplotlib",
        # a lock around building synthreid, so runs started side by side build it once
        "filelock",
        # model.name=timm/<name>: DHM on any timm backbone (models/backbones/timm_models.py)
        "timm>=1.0",
    ],
    extras_require={
        "export": ["onnx", "onnxscript", "onnxruntime"],
        # BoxMOT's ONNX ReID backend pip-installs exactly onnxruntime 1.24.3 at run time
        # when another version is present; pinning it here keeps runs offline.
        "boxmot": ["boxmot==25.0.0", "onnxruntime==1.24.3"],
        # Ray runs `reid-dhm study --executor ray` (one machine or a cluster); the local
        # executor needs nothing beyond the core install.
        "study": ["ray>=2.40"],
        # playwright drives Debian's /usr/bin/chromium in the report test (no browser download).
        "dev": [
            "pytest",
            "ruff",
            "cython",
            "onnx",
            "onnxscript",
            "onnxruntime==1.24.3",
            "playwright",
            "boxmot==25.0.0",
            "ray>=2.40",
        ],
    },
)
