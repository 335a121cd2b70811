from setuptools import find_packages, setup

setup(
    name="linnaeus",
    version="0.1.0",
    description="YAML-config-driven PyTorch runner for hierarchical image classification with trustworthy checkpoints",
    packages=find_packages(include=["linnaeus", "linnaeus.*"]),
    python_requires=">=3.11",  # hashlib.file_digest
    install_requires=[],  # pinned in requirements.txt; installed by `make venv`
    entry_points={
        "console_scripts": [
            "linnaeus-train=linnaeus.main:cli",
            "linnaeus-ckpt=linnaeus.cli.ckpt:main",
        ]
    },
)
