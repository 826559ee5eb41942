"""COCO-format detection data: the loader (real COCO layout) and the generated fashion_det proxy set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_idx
from csp_ablate.coco_eval import detections_to_coco
from csp_ablate.data.coco import CocoDataModule, CocoDetectionDataset, collate_detection, letterbox_params
from csp_ablate.data.fashion_det import FashionDetDataModule, generate_fashion_det
from csp_ablate.data.fashion_mnist import CLASSES
from csp_ablate.errors import ConfigError

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 11, "name": "bird"}]  # non-contiguous ids
# image_id -> (file, width, height, mode)
IMAGES = {
    1: ("rgb_wide.png", 40, 20, "RGB"),
    2: ("grey_tall.png", 30, 60, "L"),
    3: ("negative.png", 50, 50, "RGB"),
    4: ("grey_small.png", 20, 20, "L"),
}
ANNS = [  # (image_id, category_id, [x, y, w, h], iscrowd)
    (1, 3, [2, 3, 10, 5], 0),
    (1, 11, [30, 5, 20, 10], 0),   # partly outside (x2 = 50 > 40): clipped to x2 = 40
    (1, 7, [0, 0, 40, 20], 1),     # crowd: dropped from the targets
    (2, 11, [5, 10, 20, 40], 0),
    (4, 7, [5, 5, 0, 8], 0),       # zero area: dropped
    (4, 3, [1, 2, 17, 16], 0),
]
# the training targets each image must yield, in original pixels: (class index, x1, y1, x2, y2)
EXPECTED = {
    1: [[0, 2, 3, 12, 8], [2, 30, 5, 40, 15]],
    2: [[2, 5, 10, 25, 50]],
    3: [],
    4: [[0, 1, 2, 18, 18]],
}


def write_coco_json(path: Path, image_ids=None, with_annotations: bool = True, cats=CATS) -> Path:
    ids = list(IMAGES) if image_ids is None else image_ids
    data = {
        "images": [{"id": i, "file_name": IMAGES[i][0], "width": IMAGES[i][1], "height": IMAGES[i][2]} for i in ids],
        "categories": cats,
    }
    if with_annotations:
        data["annotations"] = [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for k, (i, c, b, crowd) in enumerate(ANNS) if i in ids
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    """root/images/*.png (grey and RGB, every pixel > 0 so padding is visible) + root/annotations/."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for file, w, h, mode in IMAGES.values():
        if mode == "RGB":  # distinct channels, so replicated grey and real colour can be told apart
            arr = np.stack([np.full((h, w), 60), np.full((h, w), 120), rng.integers(150, 255, (h, w))], -1)
        else:
            arr = rng.integers(50, 255, (h, w))
        Image.fromarray(arr.astype(np.uint8), mode).save(tmp_path / "images" / file)
    write_coco_json(tmp_path / "annotations" / "train.json")
    write_coco_json(tmp_path / "annotations" / "val.json")
    return tmp_path


def module(root: Path | None, **kw) -> CocoDataModule:
    args = dict(
        root=str(root) if root else None, train_images="images", train_annotations="annotations/train.json", val_images="images",
        val_annotations="annotations/val.json", img_size=64, num_classes=3, batch_size=2, eval_batch_size=4,
        num_workers=0, hflip=False, cache_images=False,
    )
    return CocoDataModule(**{**args, **kw})


def by_id(ds: CocoDetectionDataset) -> dict[int, tuple]:
    return {meta["image_id"]: (img, boxes, meta) for img, boxes, meta in (ds[i] for i in range(len(ds)))}


# ---- the loader ------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [False, True])
def test_items_letterbox_boxes_and_channels(tiny_coco, cache):
    dm = module(tiny_coco, cache_images=cache)
    dm.setup("fit")
    assert dm.category_ids == [3, 7, 11] and dm.class_names == ["cat", "dog", "bird"] and dm.num_classes == 3
    items = by_id(dm.val_set)
    assert sorted(items) == [1, 2, 3, 4]  # the negative image (3) is kept
    for image_id, (img, boxes, meta) in items.items():
        _, w, h, _ = IMAGES[image_id]
        assert img.shape == (3, 64, 64) and img.dtype == torch.float32 and 0.0 <= img.min() and img.max() <= 1.0
        assert boxes.dtype == torch.float32 and boxes.shape == (len(EXPECTED[image_id]), 5)
        scale, new_w, new_h, px, py = letterbox_params(w, h, 64)
        assert meta == {"image_id": image_id, "scale": scale, "pad": (px, py), "orig_size": (w, h)}
        assert max(new_w, new_h) == 64
        expected = torch.tensor(EXPECTED[image_id], dtype=torch.float32).reshape(-1, 5)
        expected[:, 1:] = expected[:, 1:] * scale + torch.tensor([px, py, px, py], dtype=torch.float32)
        torch.testing.assert_close(boxes, expected)
        content = img[:, py : py + new_h, px : px + new_w]
        assert content.min() > 0.15  # every source pixel is >= 50/255 ...
        assert img.sum() == pytest.approx(content.sum().item(), rel=1e-6)  # ... and the padding is 0
    wide, _, meta = items[1]
    assert meta["pad"] == (0, 16) and meta["scale"] == 1.6
    assert not torch.equal(wide[0], wide[1])  # RGB stays RGB
    grey = items[2][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey replicated


def test_channels_1_gives_luminance(tiny_coco):
    dm = module(tiny_coco, channels=1)
    dm.setup("validate")
    img, _, _ = dm.val_set[0]
    assert img.shape == (1, 64, 64)


def test_collate_and_loaders(tiny_coco):
    dm = module(tiny_coco, batch_size=3)
    dm.setup("fit")
    images, targets, metas = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 64, 64) and targets.shape == (4, 6) and targets.dtype == torch.float32
    assert [m["image_id"] for m in metas] == [1, 2, 3, 4]
    assert targets[:, 0].tolist() == [0, 0, 1, 3]  # batch index column: image 3 has no boxes
    assert targets[:, 1].tolist() == [0, 2, 2, 0]
    train = dm.train_dataloader()
    # seeded (seed, epoch) order, resumable mid-epoch (issue 14); whole batches only
    assert train.batch_sampler.drop_last and len(train) == 1 and type(train.batch_sampler).__name__ == "EpochBatchSampler"
    assert not dm.val_dataloader().drop_last and not train.persistent_workers
    assert len(dm.test_dataloader().dataset) == len(dm.val_set)  # test = val
    empty = collate_detection([dm.val_set[2]])  # a negative alone
    assert empty[1].shape == (0, 6)


def test_letterbox_round_trip_through_detections_to_coco(tiny_coco):
    dm = module(tiny_coco, img_size=48)
    dm.setup("validate")
    for img, boxes, meta in (dm.val_set[i] for i in range(len(dm.val_set))):
        dets = detections_to_coco(boxes[:, 1:], torch.ones(len(boxes)), boxes[:, 0].long(), meta, dm.category_ids)
        orig = EXPECTED[meta["image_id"]]
        assert len(dets) == len(orig)
        for det, (cls, x1, y1, x2, y2) in zip(dets, orig):
            assert det["image_id"] == meta["image_id"] and det["category_id"] == dm.category_ids[int(cls)]
            assert det["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)


def test_hflip_flips_image_and_boxes_together(tiny_coco):
    plain = CocoDetectionDataset(tiny_coco / "images", tiny_coco / "annotations/train.json", 64)
    flip = CocoDetectionDataset(
        tiny_coco / "images", tiny_coco / "annotations/train.json", 64, hflip=True,
        generator=torch.Generator().manual_seed(0),
    )
    img0, boxes0, _ = plain[0]
    seen = set()
    for _ in range(30):
        img, boxes, _ = flip[0]
        flipped = not torch.equal(img, img0)
        seen.add(flipped)
        if flipped:
            torch.testing.assert_close(img, img0.flip(-1))
            torch.testing.assert_close(boxes[:, [1, 3]], 64 - boxes0[:, [3, 1]])
            torch.testing.assert_close(boxes[:, [0, 2, 4]], boxes0[:, [0, 2, 4]])
    assert seen == {True, False}


def test_subsets_are_deterministic_and_val_coco_covers_only_them(tiny_coco):
    a, b = module(tiny_coco, train_subset=3, eval_subset=2), module(tiny_coco, train_subset=3, eval_subset=2)
    a.setup("fit"), b.setup("fit")
    assert len(a.train_set) == 3 and len(a.val_set) == 2
    assert a.val_set.image_ids == b.val_set.image_ids and a.train_set.image_ids == b.train_set.image_ids
    assert sorted(a.val_coco.getImgIds()) == a.val_set.image_ids
    assert {ann["image_id"] for ann in a.val_coco.dataset["annotations"]} <= set(a.val_set.image_ids)
    full = module(tiny_coco)
    full.setup("validate")
    assert sorted(full.val_coco.getImgIds()) == [1, 2, 3, 4]
    assert len(full.val_coco.getAnnIds()) == len(ANNS)  # AP's ground truth keeps crowd/degenerate boxes


def test_train_boxes_wh_in_input_pixels(tiny_coco):
    dm = module(tiny_coco)
    dm.setup("fit")
    wh = dm.train_boxes_wh()
    expected = []
    for image_id, rows in EXPECTED.items():
        scale = letterbox_params(IMAGES[image_id][1], IMAGES[image_id][2], 64)[0]
        expected += [[(x2 - x1) * scale, (y2 - y1) * scale] for _, x1, y1, x2, y2 in rows]
    torch.testing.assert_close(wh, torch.tensor(expected, dtype=torch.float32))


# ---- bad data --------------------------------------------------------------------------------
def test_missing_annotation_file_names_path(tiny_coco):
    dm = module(tiny_coco, val_annotations="annotations/nope.json")
    with pytest.raises(ConfigError, match=r"nope\.json not found.*cocodataset\.org"):
        dm.setup("validate")


def test_missing_root_image_dir_and_download(tiny_coco):
    with pytest.raises(ConfigError, match=r"data=coco needs data\.root"):
        module(None).setup("validate")
    with pytest.raises(ConfigError, match=r"never downloaded"):
        module(tiny_coco, download=True).setup("validate")
    with pytest.raises(ConfigError, match=r"image directory .*missing_dir not found"):
        module(tiny_coco, val_images="missing_dir").setup("validate")
    (tiny_coco / "images" / IMAGES[4][0]).unlink()
    dm = module(tiny_coco)
    dm.setup("validate")
    with pytest.raises(ConfigError, match=r"grey_small\.png .* not found"):
        dm.val_set[3]


def test_json_without_annotations_is_image_info(tiny_coco):
    write_coco_json(tiny_coco / "annotations" / "val.json", with_annotations=False)
    with pytest.raises(ConfigError, match=r"val\.json has no 'annotations' key.*test-dev"):
        module(tiny_coco).setup("validate")


def test_corrupt_png_names_the_file(tiny_coco):
    (tiny_coco / "images" / IMAGES[2][0]).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ConfigError, match=r"Cannot decode image .*grey_tall\.png"):
        module(tiny_coco, cache_images=True).setup("validate")  # cached: fails at setup
    dm = module(tiny_coco)
    dm.setup("validate")
    dm.val_set[0]  # the other images still load
    with pytest.raises(ConfigError, match=r"grey_tall\.png"):
        dm.val_set[1]


def test_num_classes_mismatch(tiny_coco):
    with pytest.raises(ConfigError, match=r"data\.num_classes.*80.*Allowed: 3"):
        module(tiny_coco, num_classes=80).setup("validate")


# ---- fashion_det ------------------------------------------------------------------------------
GEN = dict(n_train=60, n_val=15, canvas=128, min_items=2, max_items=5, seed=3)
BANDS = [(12, 22), (26, 44), (52, 84)]


@pytest.fixture(scope="module")
def fdet(tiny_fmnist, tmp_path_factory) -> Path:
    return generate_fashion_det(tiny_fmnist, tmp_path_factory.mktemp("fdet") / "set", **GEN)


def test_generation_is_deterministic(fdet, tiny_fmnist, tmp_path):
    again = generate_fashion_det(tiny_fmnist, tmp_path / "again", **GEN)
    for rel in ("annotations/instances_train.json", "annotations/instances_val.json", "generation.json",
                "images/train/000001.png", "images/val/000015.png"):
        assert (again / rel).read_bytes() == (fdet / rel).read_bytes(), rel
    other = generate_fashion_det(tiny_fmnist, tmp_path / "other", **{**GEN, "seed": 4})
    assert (other / "annotations/instances_train.json").read_bytes() != (fdet / "annotations/instances_train.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temp dirs left
    with pytest.raises(FileExistsError):
        generate_fashion_det(tiny_fmnist, again, **GEN)


def test_generated_boxes_bands_and_sources(fdet):
    train = json.loads((fdet / "annotations/instances_train.json").read_text())
    val = json.loads((fdet / "annotations/instances_val.json").read_text())
    assert [c["id"] for c in train["categories"]] == list(range(1, 11))
    assert [c["name"] for c in train["categories"]] == list(CLASSES)
    assert len(train["images"]) == 60 and len(val["images"]) == 15
    assert len(sorted((fdet / "images/train").iterdir())) == 60
    per_image = {}
    for ann in train["annotations"] + val["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        assert ann["area"] == w * h and ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 10
    for ann in train["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert max(per_image.values()) <= 5 and np.mean(list(per_image.values())) >= 2  # a few may be skipped
    sides = [max(a["bbox"][2:]) for a in train["annotations"]]
    for lo, hi in BANDS:  # all three scale bands occur
        assert sum(lo <= s <= hi for s in sides) >= 5, (lo, hi)
    assert all(s <= 84 for s in sides) and all(s >= 5 for s in sides)
    # train canvases are built from the train split only, val canvases from t10k only
    assert {im["fmnist_split"] for im in train["images"]} == {"train"}
    assert {im["fmnist_split"] for im in val["images"]} == {"t10k"}
    assert len({a["fmnist_index"] for a in train["annotations"]}) == len(train["annotations"])  # no repeats
    # tight boxes: each box edge touches item pixels above the threshold
    img = np.asarray(Image.open(fdet / "images/train/000001.png"))
    assert img.shape == (128, 128) and img.dtype == np.uint8
    for ann in (a for a in train["annotations"] if a["image_id"] == 1):
        x, y, w, h = ann["bbox"]
        crop = img[y : y + h, x : x + w]
        assert min(crop[0].max(), crop[-1].max(), crop[:, 0].max(), crop[:, -1].max()) > 20


def test_boxes_are_tight_not_the_pasted_square(tmp_path):
    """Items with a black margin (like real Fashion-MNIST) get the box of their pixels."""
    root = tmp_path / "fm"
    root.mkdir()
    for split, n in (("train", 50), ("t10k", 20)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 7:21, 10:18] = 200  # an 8x14 item in a 28x28 square
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    out = generate_fashion_det(root, tmp_path / "set", n_train=20, n_val=5, min_items=1, max_items=3,
                               bands=[[56, 56]])
    anns = json.loads((out / "annotations/instances_train.json").read_text())["annotations"]
    assert anns and all(a["bbox"][2] in (16, 17, 18) and a["bbox"][3] in (28, 29, 30) for a in anns)


def test_killed_generation_leaves_no_half_set(tiny_fmnist, tmp_path, monkeypatch):
    import csp_ablate.data.fashion_det as fd

    calls = []

    def failing(*args, **kw):
        if calls:
            raise KeyboardInterrupt  # dies during the val split, after train was written
        calls.append(1)
        return real(*args, **kw)

    real = fd._make_split
    monkeypatch.setattr(fd, "_make_split", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_fashion_det(tiny_fmnist, tmp_path / "set", **GEN)
    assert list(tmp_path.iterdir()) == []


def test_fashion_det_datamodule(tiny_fmnist, tmp_path, monkeypatch):
    kw = dict(root=str(tiny_fmnist), cache_dir=str(tmp_path), n_train=40, n_val=12, batch_size=8, eval_batch_size=5)
    dm = FashionDetDataModule(**kw)
    dm.prepare_data()
    out = dm.dataset_dir()
    assert out.parent == tmp_path / "fashion_det" and len(out.name) == 12 and (out / "generation.json").is_file()
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.category_ids == list(range(1, 11)) and dm.class_names == list(CLASSES)
    assert isinstance(dm.train_set._cache, torch.Tensor) and dm.train_set._cache.shape == (40, 1, 128, 128)
    batches = list(dm.train_dataloader())
    assert len(batches) == 5  # 40 / 8, drop_last
    images, targets, metas = batches[0]
    assert images.shape == (8, 3, 128, 128) and images.dtype == torch.float32 and len(metas) == 8
    assert targets.shape[1] == 6 and targets.shape[0] >= 8 and targets[:, 0].max() <= 7
    assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 128).all() and (targets[:, 1] < 10).all()
    assert len(dm.val_coco.getImgIds()) == 12 and sum(len(b[2]) for b in dm.val_dataloader()) == 12
    assert dm.train_boxes_wh().shape[1] == 2

    # reused, not regenerated; setup() alone also finds it; another data seed is another set
    import csp_ablate.data.fashion_det as fd

    monkeypatch.setattr(fd, "generate_fashion_det", lambda *a, **k: pytest.fail("regenerated"))
    again = FashionDetDataModule(**kw, img_size=64, eval_subset=4)
    again.setup("validate")
    assert again.dataset_dir() == out and len(again.val_coco.getImgIds()) == 4
    assert FashionDetDataModule(**{**kw, "seed": 1}).dataset_dir() != out


def test_fashion_det_missing_fashion_mnist(tmp_path):
    dm = FashionDetDataModule(root=str(tmp_path / "nothing"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data=fashion_det is generated from Fashion-MNIST.*data\.root="):
        dm.prepare_data()


def test_configs_compose(compose):
    for name in ("fashion_det", "coco"):
        cfg = compose(f"data={name}")
        for key in ("img_size", "channels", "num_classes", "batch_size"):
            assert cfg.data[key] is not None, (name, key)
    assert compose("data=coco").data.num_classes == 80 and compose("data=fashion_det").data.num_classes == 10
