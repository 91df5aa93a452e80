"""Packaging for unclip-jax."""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.4.30",
    "flax>=0.10.0",
    "optax>=0.2.3",
    "orbax-checkpoint>=0.6.0",
    "etils[epath]>=1.5",                # unclip_jax.paths: local and gs:// paths
    "google-cloud-storage>=2.14",       # Orbax asks it about a gs:// bucket before saving
    "ml_collections>=0.1.1",
    "einops>=0.8.0",
    "transformers>=4.40",
    "tokenizers>=0.19",
    "safetensors>=0.4",
    "tensorflow-datasets>=4.9.6",
    # tensorflow-cpu and tensorflow write the same package: where a tensorflow is installed
    # already (Colab), `python -m unclip_jax.colab_setup --deps` installs the rest and keeps it
    "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
    "tensorflow>=2.16; platform_machine!='x86_64'",
    "importlib_resources>=6.0",
    "pillow>=10.0",
    "tqdm>=4.66",
    "numpy>=1.26",
    "tensorboard>=2.16",                # `tensorboard --logdir WORKDIR`: the trainer's event files
]

# The default suite needs no torch: parity with transformers / diffusers is checked against
# stored references (tests/golden/, made by tests/golden/make_golden.py).
TEST = [
    "pytest>=8.0",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",
    "scipy>=1.11",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "gcp-storage-emulator>=2026.7.19",  # tests/test_gcs.py: a local Cloud Storage
    "cryptography>=42",                 # ... and the TLS certificate its proxy serves
]

# The live comparisons (`pytest -m parity`), tests/golden/make_golden.py and `unclip-jax bench`'s
# PyTorch side. On a machine without a GPU take torch's CPU build first (.ci/run does):
#   pip install torch --index-url https://download.pytorch.org/whl/cpu
PARITY = ["torch>=2.3", "diffusers>=0.30"]

# `unclip-jax serve`: the web demo (pip install -e ".[demo]")
DEMO = ["gradio>=6.31"]              # the version the demo and its browser test ran on
# tests/test_serve.py drives the demo in the system's chromium (apt: chromium chromium-driver)
TEST += DEMO + ["selenium>=4.20"]

setup(
    name="unclip-jax",
    version="0.1.0",
    description="unCLIP (hierarchical text-conditional image generation with CLIP latents) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",          # jax 0.10 / flax 0.12 (what is tested) need 3.11+
    # configs/ (the presets) ships inside the package as unclip_jax.configs, so that
    # `--config shapes:decoder` resolves anywhere; no top-level `configs` package is installed
    packages=find_packages(include=["unclip_jax", "unclip_jax.*"]) + ["unclip_jax.configs"],
    package_dir={"unclip_jax.configs": "configs"},
    include_package_data=True,
    package_data={"unclip_jax": ["assets/**/*", "eval/prompts/*.json"]},
    install_requires=RUNTIME,
    extras_require={
        "test": TEST,
        "parity": PARITY,
        "demo": DEMO,
        "tpu": ["jax[tpu]>=0.4.30"],
        "cuda": ["jax[cuda12]>=0.4.30"],
    },
    entry_points={"console_scripts": ["unclip-jax=unclip_jax.cli:main"]},
)
