"""Streaming training input (mgpipe.data.H5Clips): the lazy store reads what the in-memory
path holds, survives forked loader workers, trains bit-identically, and a process's memory
does not grow with the number of clips."""
from __future__ import annotations

import pickle
import tracemalloc

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from mgpipe.data import ClipDataset, H5Clips, read_h5_clips
from mgpipe.heatmaps import write_heatmaps_h5
from mgpipe.io import h5_filter
from mgpipe.train import BranchData, branch_data, train_branch

from test_train import toy_joints


def write_joints(path, arrays):
    with h5py.File(path, "w") as f:
        for cid, kp in arrays.items():
            f.create_group(cid).create_dataset("kp", data=kp, compression="gzip", shuffle=True)


def toy_heatmaps(n=24, k=68, t=8, size=16, seed=0):
    """uint8 [K, T, H, W] clips: a blob whose channel block and position depend on the class."""
    rng = np.random.default_rng(seed)
    arrays, labels = {}, []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        c = i % 3
        v = np.zeros((k, t, size, size), np.uint8)
        for j in range(c * 20, c * 20 + 20):
            cx, cy = rng.uniform(3, size - 3, 2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2) * 255
            v[j] = blob.astype(np.uint8)[None]
        arrays[f"h{i:02d}"] = v
        labels.append(c)
    return arrays, labels


def test_store_reads_what_memory_holds_and_checks_keys(tmp_path):
    arrays, _ = toy_heatmaps(6)
    path = tmp_path / "hm.h5"
    write_heatmaps_h5(path, ((c, v, {}) for c, v in arrays.items()))
    ids = list(arrays)[:4]
    store = H5Clips(path, ids + ids[:1], "heatmap")
    assert list(store) == ids and len(store) == 4 and ids[0] in store and "h05" not in store
    mem = read_h5_clips(path, ids, "heatmap")
    for c in ids:
        assert store[c].dtype == np.uint8 and np.array_equal(store[c], mem[c])
        assert store.shape(c) == arrays[c].shape
    with pytest.raises(KeyError):
        store["h05"]  # in the file, not in the store's clips
    with pytest.raises(KeyError, match="no clip 'zz'"):
        H5Clips(path, ["zz"], "heatmap")["zz"]
    joints, _ = toy_joints(2, 2)
    write_joints(tmp_path / "kp.h5", joints)
    js = H5Clips(tmp_path / "kp.h5", list(joints), "joints")
    for c, kp in joints.items():
        assert np.array_equal(js[c], kp) and js.shape(c) == kp.shape
    # pickles without its handle (spawned workers), and reopens after close
    clone = pickle.loads(pickle.dumps(store))
    assert clone._file is None and np.array_equal(clone[ids[1]], mem[ids[1]])
    store.close()
    assert np.array_equal(store[ids[2]], mem[ids[2]])


def test_handle_opened_before_fork_is_not_shared(tmp_path):
    arrays, labels = toy_heatmaps(8)
    path = tmp_path / "hm.h5"
    write_heatmaps_h5(path, ((c, v, {}) for c, v in arrays.items()))
    store = H5Clips(path, list(arrays), "heatmap")
    store[next(iter(arrays))]  # open in the parent first, as train_branch may
    parent = store._file
    ds = ClipDataset("heatmap", store, list(arrays), labels, train=False)
    ctx = torch.multiprocessing.get_context("fork")
    got = [x for x, *_ in DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context=ctx)]
    want = np.stack([arrays[c] for c in arrays])
    assert np.array_equal(torch.cat(got).numpy(), want)
    assert store._file is parent and parent.id.valid  # the parent's handle is untouched


TINY_STCNN = dict(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0, frames=16, embed_dim=16,
                  model={"channels": [16, 16], "strides": [1, 2]}, dropout=0.0)
TINY_POSEC3D = dict(epochs=2, batch_size=6, lr=3e-3, warmup_epochs=0, embed_dim=16, dropout=0.0,
                    model={"base_channels": 4, "stage_blocks": [1, 1, 1], "stem_stride": 2})


def _run(tmp_path, name, branch, data, cfg):
    epochs = []
    m = train_branch(branch, data, cfg, tmp_path / name, progress=False,
                     on_epoch=lambda e, mm: epochs.append({k: v for k, v in mm.items()
                                                           if k != "seconds"}))
    m.pop("seconds", None)
    logits = dict(np.load(tmp_path / name / "logits.npz"))
    weights = torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
    return m, epochs, logits, weights


@pytest.mark.parametrize("branch", ["stcnn", "posec3d"])
@pytest.mark.parametrize("workers", [0, 2])
def test_training_is_bit_identical_in_memory_and_streamed(tmp_path, branch, workers):
    if branch == "stcnn":
        arrays, labels = toy_joints(6)
        path, modality, cfg = tmp_path / "kp.h5", "joints", TINY_STCNN
        write_joints(path, arrays)
    else:
        arrays, labels = toy_heatmaps(18)
        path, modality, cfg = tmp_path / "hm.h5", "heatmap", TINY_POSEC3D
        write_heatmaps_h5(path, ((c, v, {}) for c, v in arrays.items()))
    cfg = {**cfg, "workers": workers, "device": "cpu"}
    ids = list(arrays)
    tr = [i for i in range(len(ids)) if i % 3]
    va = [i for i in range(len(ids)) if i % 3 == 0]

    def data(store):
        return BranchData(modality, store, 3, [ids[i] for i in tr], [labels[i] for i in tr],
                          [ids[i] for i in va], [labels[i] for i in va], [ids[i] for i in va[:2]])

    a = _run(tmp_path, "mem", branch, data(arrays), cfg)
    b = _run(tmp_path, "h5", branch, data(H5Clips(path, ids, modality)), cfg)
    assert a[0] == b[0] and a[1] == b[1] and len(a[1]) == 2  # best and per-epoch metrics, loss
    for k in a[2]:
        assert np.array_equal(a[2][k], b[2][k]), k
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert torch.equal(a[3][k], b[3][k]), k


def _peak_while_iterating(arrays_of, ids):
    """Peak bytes of Python/numpy allocations (tracemalloc) while building the store and
    iterating a loader over all its clips, in this process (workers=0)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        store = arrays_of(ids)
        ds = ClipDataset("heatmap", store, ids, [0] * len(ids))
        for _ in DataLoader(ds, batch_size=2, num_workers=0):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_clips(tmp_path):
    arrays, _ = toy_heatmaps(32, t=16, size=24)  # 0.6 MB a clip, 20 MB in all
    path = tmp_path / "hm.h5"
    write_heatmaps_h5(path, ((c, v, {}) for c, v in arrays.items()))
    clip = next(iter(arrays.values())).nbytes
    ids = list(arrays)
    lazy = lambda i: H5Clips(path, i, "heatmap")  # noqa: E731
    small, large = _peak_while_iterating(lazy, ids[:8]), _peak_while_iterating(lazy, ids)
    # 4x the clips: the peak stays that of a few clips (a batch being collated)
    assert large < small + clip, (small, large, clip)
    assert large < 6 * clip, (large, clip)
    # the measurement does see growth: the in-memory path holds every clip
    eager = lambda i: read_h5_clips(path, i, "heatmap")  # noqa: E731
    assert _peak_while_iterating(eager, ids) > 30 * clip


def test_branch_data_streams_from_the_file(tmp_path):
    arrays, labels = toy_heatmaps(9)
    path = tmp_path / "hm.h5"
    write_heatmaps_h5(path, ((c, v, {"mode": "joint"}) for c, v in arrays.items()))
    classes = ["a", "b", "c"]
    ids = list(arrays)
    m = pd.DataFrame({"clip_id": ids + ["gone"],
                      "split": ["train"] * 5 + ["val"] * 2 + ["test"] * 2 + ["train"],
                      "label": [classes[y] for y in labels] + ["a"]})
    d = branch_data("posec3d", m, classes, path)
    assert isinstance(d.arrays, H5Clips) and len(d.arrays) == 9
    assert d.missing["train"] == ["gone"] and d.train_ids == ids[:5]
    assert np.array_equal(d.arrays[ids[3]], arrays[ids[3]])
    from mgpipe.train import _input_channels
    assert _input_channels(d, {"motion": True}) == 68


@pytest.mark.parametrize("modality", ["heatmap", "rgb", "joints"])
def test_batches_read_straight_into_one_tensor_equal_collated_items(tmp_path, modality):
    """ClipDataset.batch (one tensor, clips read into it; shared memory in a worker) gives
    exactly default_collate of the items, from a file and from memory, train and eval."""
    from torch.utils.data import DataLoader, default_collate

    from mgpipe.data import ClipBatches, ClipDataset, H5Clips, read_h5_clips

    rng = np.random.default_rng(0)
    shape = {"heatmap": (68, 4, 8, 8), "rgb": (4, 8, 8, 3), "joints": (12, 68, 3)}[modality]
    path = tmp_path / "clips.h5"
    with h5py.File(path, "w") as f:
        for i in range(7):
            a = (rng.uniform(0, 100, shape).astype(np.float32) if modality == "joints"
                 else rng.integers(0, 255, shape, dtype=np.uint8))
            if modality == "joints":
                f.create_group(f"c{i}").create_dataset("kp", data=a)
            else:
                f.create_dataset(f"c{i}", data=a, chunks=a.shape, **h5_filter())
    ids = [f"c{i}" for i in range(7)]
    for arrays in (H5Clips(path, ids, modality), read_h5_clips(path, ids, modality)):
        for train in (True, False):
            ds = ClipDataset(modality, arrays, ids, list(range(7)), train=train, frames=8)
            ds.set_epoch(3)
            got = ds.batch([4, 0, 6])
            want = default_collate([ds[i] for i in (4, 0, 6)])
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))
    ctx = torch.multiprocessing.get_context("fork")
    ds = ClipDataset(modality, H5Clips(path, ids, modality), ids, list(range(7)), train=True, frames=8)
    loader = DataLoader(ClipBatches(ds), batch_size=None, sampler=[[0, 1, 2], [3, 4, 5], [6]],
                        num_workers=2, multiprocessing_context=ctx)
    got = [b[0] for b in loader]
    want = [default_collate([ds[i] for i in b])[0] for b in ([0, 1, 2], [3, 4, 5], [6])]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
