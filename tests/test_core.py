"""Unit tests of the core library: labels, data, augmentation, models, optimizer groups, schedule, loss."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import make_csv_dataset, make_folder_dataset
from PIL import Image

from emotion.data.augment import AugmentConfig, augment, mix_batch
from emotion.data.dataset import DataError, split_train_val, to_face48
from emotion.data.labels import CLASS_NAMES, canonical_label, display
from emotion.data.splits import load_split
from emotion.evaluation.evaluate import compute_metrics
from emotion.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from emotion.models.networks import ModelConfig, build_model, count_parameters
from emotion.models.weights import WeightsError, resolve_clip_weights
from emotion.training.config import ConfigError, TrainConfig
from emotion.training.optim import lr_factor, param_groups, set_phase
from emotion.training.setup import load_train_val

TINY_CLIP = ModelConfig(kind="clip", clip_model="emotion-tiny-vit")


def test_labels_and_aliases():
    assert CLASS_NAMES == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    for alias, name in [
        ("Anger", "angry"),
        ("disgusted", "disgust"),
        ("fearful", "fear"),
        ("happiness", "happy"),
        ("sadness", "sad"),
        ("surprised", "surprise"),
        ("NEUTRAL", "neutral"),
    ]:
        assert canonical_label(alias) == name
    assert canonical_label("contempt") is None
    assert display("disgust") == "Disgusted 🤢" and display("happy", with_emoji=False) == "Happy"


def test_to_face48_any_mode_and_size():
    for img in [
        Image.new("RGB", (300, 200), (10, 200, 30)),
        Image.new("RGBA", (64, 64)),
        Image.new("L", (48, 48)),
        Image.new("P", (90, 120)),
        Image.new("I;16", (50, 50)),
        np.zeros((100, 80, 3), np.uint8),
        np.zeros((30, 30, 4), np.uint8),
    ]:
        face = to_face48(img)
        assert face.shape == (48, 48) and face.dtype == np.uint8


def test_folder_dataset_cache_and_invalidation(tmp_path):
    root = make_folder_dataset(tmp_path / "fer", per_class=3)
    cache = tmp_path / "c"
    ds = load_split(root, "train", cache)
    assert len(ds) == 21 and ds.class_counts() == [3] * 7 and ds.images.shape == (21, 48, 48)
    assert len(list(cache.glob("*.pt"))) == 1
    assert torch.equal(load_split(root, "train", cache).images, ds.images)  # served from the cache
    Image.new("L", (48, 48)).save(root / "train" / "happy" / "new.png")
    assert len(load_split(root, "train", cache)) == 22  # a new file invalidates the cache
    assert len(list(cache.glob("*.pt"))) == 2


def test_alias_folders_and_corrupt_files_are_skipped(tmp_path, caplog):
    root = make_folder_dataset(tmp_path / "fer", per_class=2, splits=("train",))
    (root / "train" / "happy").rename(root / "train" / "Happiness")
    (root / "train" / "sad" / "broken.jpg").write_bytes(b"not an image")
    ds = load_split(root, "train", tmp_path / "c")
    assert len(ds) == 14 and ds.skipped == 1
    assert "skipped 1 unreadable" in caplog.text


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("unknown", "unknown class folder"),
        ("missing", "no folder for class"),
        ("empty", "holds no images"),
        ("nosplit", "neither a .nosuch/. folder"),
    ],
)
def test_bad_folder_layouts_fail_clearly(tmp_path, breakage, message):
    root = make_folder_dataset(tmp_path / "fer", per_class=1, splits=("train",))
    split = root / "train"
    if breakage == "unknown":
        (split / "bored").mkdir()
    elif breakage == "missing":
        for f in (split / "fear").iterdir():
            f.unlink()
        (split / "fear").rmdir()
    elif breakage == "empty":
        for d in split.iterdir():
            for f in d.iterdir():
                f.unlink()
    else:
        split = root / "nosuch"
    with pytest.raises(DataError, match=message):
        load_split(root, split.name, tmp_path / "c")


def test_csv_dataset_uses_original_codes(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "fer2013.csv", per_class=2)
    train = load_split(csv_path, "train")
    test = load_split(tmp_path, "test")  # a folder holding fer2013.csv works too
    private = load_split(csv_path, "private")
    assert len(train) == len(test) == len(private) == 14
    # conftest draws a band at a row that encodes the label: the CSV's codes must map back onto it.
    for img, label in zip(train.images, train.labels, strict=False):
        assert img[3 + 6 * int(label) + 2, 20] == 220


def test_csv_bad_columns_and_rows(tmp_path, caplog):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,image\n1,2 3\n")
    with pytest.raises(DataError, match="expected at least 'emotion' and 'pixels'"):
        load_split(bad, "train")
    rows = tmp_path / "rows.csv"
    rows.write_text("emotion,pixels,Usage\n3," + " ".join(["7"] * 2304) + ",Training\n9,1 2 3,Training\n")
    ds = load_split(rows, "train")
    assert len(ds) == 1 and ds.skipped == 1 and CLASS_NAMES[int(ds.labels[0])] == "happy"
    with pytest.raises(DataError, match="no readable rows"):
        load_split(rows, "private")


def test_val_split_is_stratified_and_seeded(tmp_path):
    ds = load_split(make_folder_dataset(tmp_path / "fer", per_class=10, splits=("train",)), "train", tmp_path / "c")
    tr, va = split_train_val(ds, 0.2, seed=3)
    assert len(va) == 14 and va.class_counts() == [2] * 7 and len(tr) == 56
    assert torch.equal(split_train_val(ds, 0.2, seed=3)[1].images, va.images)


def test_augment_shapes_range_and_variety():
    x = torch.rand(16, 1, 48, 48)
    y = augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x)
    flip_only = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=1.0, rotation=0, brightness=0, contrast=0, erase=0)
    assert torch.allclose(augment(x, flip_only), x.flip(-1), atol=1e-5)


def test_frame_jitter_reframes_only_its_share_of_faces():
    # A bright square on black: its area in the output shows how each face was framed.
    x = torch.zeros(400, 1, 48, 48)
    x[:, :, 12:36, 12:36] = 1.0
    still = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=0, rotation=0, brightness=0, contrast=0, erase=0)
    assert torch.allclose(augment(x, still), x, atol=1e-5)
    framed = augment(x, replace(still, frame_jitter=0.5), torch.Generator().manual_seed(0))
    moved = (framed - x).abs().flatten(1).amax(1) > 0.05
    assert 0.35 < moved.float().mean() < 0.65  # about half the faces reframed, the rest untouched
    area = framed[moved].flatten(1).mean(1) / x[0].mean()
    # Looser crops (side up to 1.3x) shrink the square, tighter ones (0.73x) enlarge it; tilt keeps its area.
    assert area.min() < 0.8 and area.max() > 1.4
    everyone = augment(x, replace(still, frame_jitter=1.0), torch.Generator().manual_seed(1))
    assert ((everyone - x).abs().flatten(1).amax(1) > 0.05).float().mean() > 0.95


def test_surround_replaces_only_what_lies_past_the_face():
    # Flat faces of distinct greys: reflected borders keep a face's own grey, foreign surroundings do not.
    grey = 0.2 + 0.6 * (torch.arange(200) * 37 % 200) / 200  # neighbours in the batch differ by 0.1 or more
    x = grey.view(200, 1, 1, 1).expand(200, 1, 48, 48).contiguous()
    still = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=0, rotation=0, brightness=0, contrast=0, erase=0)
    framed = replace(still, frame_jitter=1.0)
    assert torch.allclose(augment(x, framed, torch.Generator().manual_seed(0)), x, atol=1e-5)
    out = augment(x, replace(framed, surround=0.5), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, :, 20:28, 20:28], x[:, :, 20:28, 20:28], atol=1e-5)  # the face itself stays
    foreign = (out - x).abs().flatten(1).amax(1) > 0.01
    assert 0.2 < foreign.float().mean() < 0.6  # about half the faces, of those whose crop reaches past the face
    with pytest.raises(ConfigError, match="foreign surroundings"):
        TrainConfig(augment=replace(still, surround=-0.1)).check()


def test_split_seed_sets_the_held_out_faces_apart_from_the_seed(tmp_path):
    data = make_folder_dataset(tmp_path / "fer", per_class=10, splits=("train",))
    base = TrainConfig.for_model("cnn", data=str(data), val_split=0.2, data_cache=str(tmp_path / "c"))
    held = [load_train_val(replace(base, seed=s, split_seed=7))[1].images for s in (1, 2)]
    assert torch.equal(held[0], held[1])  # networks of different seeds hold out the same faces
    assert torch.equal(load_train_val(replace(base, seed=7))[1].images, held[0])  # split_seed None: --seed
    assert not torch.equal(load_train_val(replace(base, seed=1))[1].images, held[0])
    with pytest.raises(ConfigError, match="split seed"):
        replace(base, split_seed=-1).check()
    with pytest.raises(ConfigError, match="frame jitter"):
        replace(base, augment=replace(base.augment, frame_jitter=1.5)).check()


def test_cutmix_pastes_a_box_whose_area_sets_the_label_weight():
    torch.manual_seed(0)
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 48, 48)  # image i is filled with i
    y = torch.arange(8)
    for _ in range(20):
        mixed, partner, lam = mix_batch(x, y, AugmentConfig(cutmix=1.0, mix_prob=1.0))
        own = (mixed == x).float().mean(dim=(1, 2, 3))  # share of each image's own pixels
        expected = torch.where(partner == y, 1.0, lam)  # an image paired with itself keeps every pixel
        assert torch.allclose(own, expected, atol=1e-6)
        pasted = mixed != x
        assert torch.equal(mixed[pasted], partner.float().view(8, 1, 1, 1).expand_as(x)[pasted])


def test_mixup_blends_images_and_an_unmixed_batch_is_untouched():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 48, 48), torch.arange(8)
    mixed, partner, lam = mix_batch(x, y, AugmentConfig(mixup=0.4, mix_prob=1.0))
    order = partner  # labels are the indices, so the partner labels name the partner images
    assert 0 < lam < 1 and torch.allclose(mixed, lam * x + (1 - lam) * x[order], atol=1e-6)
    assert mix_batch(x, y, AugmentConfig(mixup=0.4, mix_prob=0.0)) == (x, y, 1.0)
    assert mix_batch(x, y, AugmentConfig()) == (x, y, 1.0)  # off by default


def test_adapter_layers_match_the_seed():
    model, _ = build_model(
        ModelConfig(kind="clip", clip_model="emotion-tiny-vit", adapter_dims=(1024, 512, 256)), clip_weights="random"
    )
    layers = list(model.adapter)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 3 + ["Linear"]
    linears = [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)]
    assert linears == [(32, 1024), (1024, 512), (512, 256), (256, 7)]  # ViT-B/32 has 512 where the tiny config has 32


def test_vit_b32_structure_with_random_weights():
    model, pp = build_model(ModelConfig(), clip_weights="random")
    assert model.adapter[0].in_features == 512 and pp.size == 224
    assert [(m.in_features, m.out_features) for m in model.adapter if isinstance(m, nn.Linear)] == [
        (512, 1024),
        (1024, 512),
        (512, 256),
        (256, 7),
    ]
    assert len(model.encoder.transformer.resblocks) == 12


def test_preprocess_matches_open_clip_transform():
    import open_clip

    _, pp = build_model(ModelConfig(), clip_weights="random")
    _, _, reference = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, force_quick_gelu=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8))
    expected = reference(img.convert("RGB"))
    ours = pp(torch.from_numpy(np.array(img))[None])[0]
    assert ours.shape == expected.shape == (3, 224, 224)
    # open_clip resizes PIL images with antialiasing; the means per channel agree closely.
    assert torch.allclose(ours.mean((1, 2)), expected.mean((1, 2)), atol=0.02)


def test_trainable_sets_before_and_after_unfreeze():
    model, _ = build_model(TINY_CLIP, clip_weights="random")
    cfg = TrainConfig(model=TINY_CLIP, unfreeze_epoch=3, unfreeze_blocks=1)
    assert set_phase(model, cfg, 2) == "frozen"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.adapter.named_parameters(prefix="adapter")}
    assert set_phase(model, cfg, 3) == "unfrozen"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last = len(model.encoder.transformer.resblocks) - 1
    encoder_trainable = {n for n in trainable if n.startswith("encoder.")}
    assert encoder_trainable and all(
        n.startswith((f"encoder.transformer.resblocks.{last}.", "encoder.ln_post", "encoder.proj"))
        for n in encoder_trainable
    )
    assert "encoder.proj" in trainable and "encoder.conv1.weight" not in trainable


def test_param_groups_learning_rates_and_decay():
    model, _ = build_model(TINY_CLIP, clip_weights="random")
    cfg = TrainConfig(model=TINY_CLIP, lr=1e-3, clip_lr=1e-5, weight_decay=0.05, unfreeze_blocks=2)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert set(groups) == {"adapter", "adapter_no_decay", "clip", "clip_no_decay"}
    assert groups["adapter"]["lr"] == 1e-3 and groups["clip"]["lr"] == 1e-5
    assert groups["adapter_no_decay"]["weight_decay"] == 0 and groups["clip_no_decay"]["weight_decay"] == 0
    assert all(p.ndim >= 2 for g in ("adapter", "clip") for p in groups[g]["params"])
    no_decay_ids = {id(p) for g in ("adapter_no_decay", "clip_no_decay") for p in groups[g]["params"]}
    for m in model.modules():
        if (
            isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))
            and m.weight is not None
            and any(m.weight is p for p in model.adapter.parameters())
        ):
            assert id(m.weight) in no_decay_ids and id(m.bias) in no_decay_ids
    cnn, _ = build_model(ModelConfig(kind="cnn", cnn_widths=(8, 16)))
    assert {g["name"] for g in param_groups(cnn, cfg)} == {"model", "model_no_decay"}


def test_schedule_values():
    total, warmup = 100, 10
    assert lr_factor(0, total, warmup, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, total, warmup, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, total, warmup, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, total, warmup, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, total, warmup, 0.01) == pytest.approx(0.01)
    values = [lr_factor(s, total, warmup, 0.01) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone cosine decay
    assert lr_factor(32, total, warmup, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_label_smoothing_value():
    logits = torch.tensor([[4.0, 0, 0, 0, 0, 0, 0]])
    target = torch.tensor([0])
    logp = logits.log_softmax(-1)
    expected = -(0.9 * logp[0, 0] + 0.1 * logp[0].mean())
    assert torch.nn.functional.cross_entropy(
        logits, target, label_smoothing=TrainConfig().label_smoothing
    ) == pytest.approx(expected.item())


def test_cnn_size_and_forward():
    model, pp = build_model(ModelConfig(kind="cnn"))
    assert 1_000_000 <= count_parameters(model) <= 5_000_000
    out = model(pp(torch.randint(0, 255, (3, 48, 48), dtype=torch.uint8)))
    assert out.shape == (3, 7)


def test_checkpoint_round_trip_and_errors(tmp_path):
    model, _ = build_model(TINY_CLIP, clip_weights="random")
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, TINY_CLIP, train_config={"epochs": 1}, metrics={"val_acc": 0.5})
    loaded = load_checkpoint(path)
    assert loaded.config == TINY_CLIP and loaded.metrics == {"val_acc": 0.5}
    x = torch.rand(2, 1, 48, 48)
    model.eval()
    assert torch.allclose(loaded.model(loaded.preprocess(x)), model(loaded.preprocess(x)), atol=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an emotion checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_weights_resolution_order(tmp_path, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO)
    monkeypatch.delenv("EMOTION_CLIP_WEIGHTS", raising=False)
    assert resolve_clip_weights("ViT-B-32", "openai", "random") == "random"
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    assert resolve_clip_weights("ViT-B-32", "openai", str(f)) == str(f)
    monkeypatch.setenv("EMOTION_CLIP_WEIGHTS", str(f))
    assert resolve_clip_weights("ViT-B-32", "openai") == str(f)
    assert "step 1" in caplog.text
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_clip_weights("ViT-B-32", "openai", str(tmp_path / "missing.bin"))
    monkeypatch.delenv("EMOTION_CLIP_WEIGHTS")
    # Step 2: a file already in open_clip's URL cache is found without the network.
    import open_clip

    url = open_clip.get_pretrained_cfg("RN50", "openai")["url"]
    cached = tmp_path / "cache" / os.path.basename(url)
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    monkeypatch.setattr(open_clip.pretrained, "has_hf_hub", lambda *a, **k: False)
    assert resolve_clip_weights("RN50", "openai", cache_dir=str(cached.parent)) == str(cached)

    # Step 3 fails offline: a clear error, never random weights.
    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", no_network)
    with pytest.raises(WeightsError, match="--clip-weights PATH"):
        resolve_clip_weights("ViT-B-32", "openai", cache_dir=str(tmp_path / "empty"))


def test_clip_weights_file_loads(tmp_path):
    """A local weights file (an open_clip state dict) is loaded, not ignored."""
    import open_clip

    from emotion.models.weights import _open_clip

    _open_clip()
    clip = open_clip.create_model("emotion-tiny-vit", pretrained=None)
    torch.save(clip.state_dict(), tmp_path / "tiny.pt")
    model, _ = build_model(TINY_CLIP, clip_weights=str(tmp_path / "tiny.pt"))
    assert torch.equal(model.encoder.conv1.weight, clip.visual.conv1.weight)


def test_metrics_computation():
    labels = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    preds = np.array([0, 1, 1, 1, 2, 3, 3, 0])
    m = compute_metrics(labels, preds)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["per_class"]["angry"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["disgust"]["precision"] == pytest.approx(2 / 3)
    assert np.array(m["confusion_matrix"]).sum() == 8
    assert m["confusion_matrix"][3] == [1, 0, 0, 2, 0, 0, 0] and m["per_class"]["fear"]["support"] == 1
    assert m["confusion_matrix_normalized"][3][3] == pytest.approx(0.6667, abs=1e-4)
    assert set(m) >= {
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_f1",
        "per_class",
        "confusion_matrix",
    }


def test_checkpoint_with_the_removed_sharpness_field_loads(tmp_path):
    cfg = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)
    model, _ = build_model(cfg)
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, cfg)
    blob = torch.load(path, weights_only=True)
    blob["model_config"]["cnn_sharpness"] = 0.0511  # written by releases that blurred inputs to the old training data
    torch.save(blob, path)
    loaded = load_checkpoint(path)
    assert not hasattr(loaded.config, "cnn_sharpness")
    assert loaded.preprocess(torch.rand(2, 1, 48, 48)).shape == (2, 1, 48, 48)


def test_weight_ema_averages_weights_and_buffers():
    from emotion.training.optim import WeightEMA

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # first update: decay min(0.5, 2/11)
    w = 2 / 11
    assert torch.allclose(ema.module[0].weight, start + (1 - w))
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 4.0 * (1 - w)))
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_training_with_ema_saves_the_average_and_resumes(tiny_fer, tmp_path):
    from emotion.training.loop import train

    # amp "off": on a CPU with native bf16, "auto" times each new run and could pick another precision for run a than b
    kw = dict(
        data=str(tiny_fer),
        model=ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1),
        batch_size=16,
        ema_decay=0.9,
        amp="off",
    )
    train(TrainConfig(out=str(tmp_path / "a"), epochs=2, **kw))
    train(TrainConfig(out=str(tmp_path / "b"), epochs=1, **kw))
    train(TrainConfig(out=str(tmp_path / "b"), epochs=2, resume=True, **kw))
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    raw, avg = a["training_state"]["raw_model"], a["model"]
    assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())  # "model" is the average
    assert a["training_state"]["ema_updates"] == b["training_state"]["ema_updates"] > 0
    for k in avg:
        assert torch.allclose(avg[k].float(), b["model"][k].float(), rtol=1e-3, atol=1e-5), k
