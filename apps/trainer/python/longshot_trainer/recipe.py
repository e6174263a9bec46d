"""The training recipe (apps/trainer/recipe.json) and the run-time settings it fixes.

Torch-free on purpose: `pin_kernels` has to run before `import torch`, because OpenBLAS picks its
kernels and libgomp its wait policy when the libraries load.
"""
import json
import os
import sys

RECIPE_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "recipe.json")

# Speed settings, not part of the recipe's arithmetic: OpenMP threads wait passively and OpenBLAS
# runs single-threaded under torch's own threads (spinning BLAS threads made the DiT's small
# products 20x slower on a shared machine).
RUNTIME_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}


def load_recipe(path: str = RECIPE_FILE) -> dict:
    with open(path) as f:
        return json.load(f)


def pin_kernels(recipe: dict) -> None:
    """Sets the recipe's kernel choices (`reproducibility.environment`) and the speed settings in
    this process's environment. Call before importing torch. A different value already in the
    environment is replaced, with a warning: the weights would not be the recipe's."""
    pins = dict(RUNTIME_ENVIRONMENT, **recipe.get("reproducibility", {}).get("environment", {}))
    for name, value in pins.items():
        if os.environ.get(name, value) != value and name not in RUNTIME_ENVIRONMENT:
            print(f"trainer: {name}={os.environ[name]} replaced by the recipe's {value}", file=sys.stderr)
        os.environ[name] = value


def recipe_threads(recipe: dict) -> int:
    """PyTorch's threads in the recipe: a reduction split over another count sums in another order."""
    return int(recipe.get("reproducibility", {}).get("threads", os.cpu_count() or 1))
