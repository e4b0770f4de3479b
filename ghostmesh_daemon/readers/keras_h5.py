"""Read the weights (and the layer configs) of a Keras HDF5 file into plain numpy arrays.

Keras 2 (and ``tf.keras``) save a model to ``.h5`` in one of two layouts, both handled here:

* ``model.save("m.h5")``: the weights under a group ``model_weights``, the architecture as JSON in the
  file's ``model_config`` attribute;
* ``model.save_weights("m.h5")``: the weights at the root, no architecture.

Either way each layer is a group named after the layer, listed in order by the ``layer_names``
attribute; each group's ``weight_names`` attribute lists its arrays by path (``conv/kernel:0``). Keras
splits an attribute too large for HDF5's 64 KiB header into ``name0``, ``name1``, ...; that is undone.
Nothing here knows any particular network: :func:`read_keras_h5` returns every layer, in the file's
order, with its weights keyed by their short names (``kernel``, ``bias``, ``beta``, ``moving_mean``,
...) and, when the file has its architecture, the layer's class, config and input layers.

Keras 3's own format (``.weights.h5`` / ``.keras``: ``layers/<name>/vars/0``) keeps no weight names and is
refused with a clear error, as are files that are not HDF5 or hold no weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class KerasH5Error(ValueError):
    """A file is not a Keras HDF5 weight file we can read; the message names the file and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class KerasLayer:
    """One layer of the file: its weights and, when the file has its architecture, its config.

    ``weights`` maps the short weight name (``kernel`` for ``conv/kernel:0``) to the array as saved
    (Keras layout: conv kernels (kh, kw, in, out), dense kernels (in, out)). ``class_name`` is ``None``
    and ``config`` empty for a weights-only file; ``inbound`` names the layers feeding this one.
    """

    name: str
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    class_name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    inbound: tuple[str, ...] = ()


@dataclass(frozen=True)
class KerasH5:
    """What :func:`read_keras_h5` found: layers in order, plus the file's Keras metadata."""

    path: Path
    layers: dict[str, KerasLayer]
    keras_version: str | None = None
    backend: str | None = None
    model_class: str | None = None  # "Functional", "Sequential", ... (None without an architecture)

    @property
    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer_name: {weight_name: array}}`` in the file's order, layers without weights included (empty)."""
        return {name: layer.weights for name, layer in self.layers.items()}

    @property
    def has_config(self) -> bool:
        return self.model_class is not None

    def layer(self, name: str) -> KerasLayer:
        """The layer called ``name``; a missing one is a :class:`KerasH5Error` naming the file."""
        try:
            return self.layers[name]
        except KeyError:
            raise KerasH5Error(self.path, f"has no layer {name!r}") from None

    def consumers(self, name: str) -> list[KerasLayer]:
        """The layers whose inputs include ``name`` (needs the architecture), in file order."""
        return [layer for layer in self.layers.values() if name in layer.inbound]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _attribute(group: Any, name: str) -> list[str] | None:
    """A list-of-strings attribute, reassembled if Keras chunked it (``name0``, ``name1``, ...)."""
    if name in group.attrs:
        raw = group.attrs[name]
        return [_text(v) for v in np.atleast_1d(raw)] if np.size(raw) else []
    if f"{name}0" not in group.attrs:
        return None
    out: list[str] = []
    i = 0
    while f"{name}{i}" in group.attrs:
        out.extend(_text(v) for v in np.atleast_1d(group.attrs[f"{name}{i}"]))
        i += 1
    return out


def _short_name(weight_path: str) -> str:
    """``block/conv/kernel:0`` -> ``kernel``."""
    last = weight_path.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _inbound_names(nodes: Any) -> tuple[str, ...]:
    """Names of the layers feeding a layer, from its ``inbound_nodes`` (Keras 2 lists or Keras 3 dicts)."""
    names: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            history = item.get("config", {}).get("keras_history") if isinstance(item.get("config"), dict) else None
            if history:
                names.append(str(history[0]))
                return
            for v in item.values():
                walk(v)
        elif isinstance(item, (list, tuple)):
            if item and isinstance(item[0], str) and len(item) >= 3 and isinstance(item[1], int):
                names.append(item[0])  # Keras 2: [layer_name, node_index, tensor_index, kwargs]
                return
            for v in item:
                walk(v)

    walk(nodes)
    return tuple(dict.fromkeys(names))


def _layer_configs(path: Path, model_config: str) -> tuple[str, dict[str, tuple[str, dict, tuple[str, ...]]]]:
    try:
        cfg = json.loads(model_config)
    except json.JSONDecodeError as err:
        raise KerasH5Error(path, f"its model_config attribute is not JSON ({err})") from None
    model_class = str(cfg.get("class_name", "?"))
    inner = cfg.get("config", {})
    layers = inner.get("layers", []) if isinstance(inner, dict) else inner  # very old Sequential: a bare list
    out: dict[str, tuple[str, dict, tuple[str, ...]]] = {}
    for layer in layers:
        conf = layer.get("config", {})
        name = layer.get("name") or conf.get("name")
        if name is None:
            continue
        out[str(name)] = (str(layer.get("class_name")), conf, _inbound_names(layer.get("inbound_nodes", [])))
    return model_class, out


def read_keras_h5(path: str | Path) -> KerasH5:
    """Every layer of the Keras HDF5 file at ``path``, with its weights (and config, if saved).

    Raises :class:`KerasH5Error` naming the file when it is missing, not HDF5, in Keras 3's format, or
    holds no weights.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise KerasH5Error(path, "no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise KerasH5Error(path, f"not an HDF5 file ({err})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layer_names = _attribute(root, "layer_names")
        if layer_names is None:
            if "layers" in f or "_layer_checkpoint_dependencies" in f:
                raise KerasH5Error(path, "is in Keras 3's .weights.h5 format (layers/*/vars), which keeps no weight "
                                         "names; save it with Keras 2 / tf.keras (model.save('m.h5'))")
            raise KerasH5Error(path, "holds no Keras weights (no layer_names attribute)")
        model_class, configs = None, {}
        if "model_config" in f.attrs:
            model_class, configs = _layer_configs(path, _text(f.attrs["model_config"]))
        layers: dict[str, KerasLayer] = {}
        total = 0
        # Config order when there is one (it is the graph's order and includes weightless layers).
        order = list(configs) + [n for n in layer_names if n not in configs]
        for name in order:
            weights: dict[str, np.ndarray] = {}
            if name in layer_names:
                if name not in root:
                    raise KerasH5Error(path, f"lists layer {name!r} but has no group for it")
                group = root[name]
                for wpath in _attribute(group, "weight_names") or []:
                    if wpath not in group:
                        raise KerasH5Error(path, f"layer {name!r} lists weight {wpath!r} but does not hold it")
                    short = _short_name(wpath)
                    if short in weights:
                        raise KerasH5Error(path, f"layer {name!r} has two weights named {short!r}")
                    weights[short] = np.array(group[wpath][()])
                    total += 1
            class_name, config, inbound = configs.get(name, (None, {}, ()))
            layers[name] = KerasLayer(name=name, weights=weights, class_name=class_name, config=config, inbound=inbound)
        if total == 0:
            raise KerasH5Error(path, "holds no weights (every layer's weight_names is empty)")
        return KerasH5(
            path=path,
            layers=layers,
            keras_version=_text(f.attrs["keras_version"]) if "keras_version" in f.attrs else None,
            backend=_text(f.attrs["backend"]) if "backend" in f.attrs else None,
            model_class=model_class,
        )
