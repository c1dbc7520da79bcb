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
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "torchreid==0.2.5",
        # torchreid 0.2.5 declares no dependencies; these are the ones it imports.
        "numpy",
        "scipy",
        "Pillow",
        "opencv-python",
        "tensorboard",
        "gdown",
        # faiss-gpu's wheel also runs CPU indexes on machines without a GPU.
        "faiss-gpu==1.15.1",
        "pyyaml",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "export": ["onnx", "onnxscript", "onnxruntime"],
        # playwright drives Debian's /usr/bin/chromium in the report test (no browser download).
        "dev": ["pytest", "ruff", "cython", "onnx", "onnxscript", "onnxruntime", "playwright"],
    },
)
