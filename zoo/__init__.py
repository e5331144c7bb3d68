"""The model zoo: datasets and trained models, each reachable by name."""

from results.errors import (
    BadEpsilonError,
    BadModelError,
    CorruptDataError,
    CorruptWeightsError,
    DataMissingError,
    EmptyPatternError,
    QBenchError,
    UnknownNameError,
)
from zoo import catalog as _catalog  # noqa: F401 - registers the models
from zoo.data import Dataset, list_datasets, load_dataset, tensor_sha256
from zoo.registry import ModelSpec, get_model, list_models, model_spec, register_model

__all__ = [
    "BadEpsilonError", "BadModelError", "CorruptDataError", "CorruptWeightsError",
    "DataMissingError", "Dataset", "EmptyPatternError", "ModelSpec", "QBenchError",
    "UnknownNameError", "get_model", "list_datasets", "list_models", "load_dataset",
    "model_spec", "register_model", "tensor_sha256",
]

from zoo.kernels import pin as _pin_kernels  # noqa: E402
from zoo.plugins import load_plugins as _load_plugins  # noqa: E402

_pin_kernels()  # before any model runs: the same convolution kernels on every x86 CPU

_load_plugins()  # models of installed packages (entry-point group "qbench.models")
