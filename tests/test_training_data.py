"""Data loading for stages 1-2: parquet / imagefolder / webdataset sources, preprocessing, bad-record
counting, weighted mixing, homogeneous batches, rank sharding and exact resume. Tiny shards built in the test."""

from __future__ import annotations

import gc
import io
import json
import tarfile

import datasets
import pytest
import torch
from PIL import Image

from deepgen.training.config import DataConfig, DataSourceConfig
from deepgen.training.data import (
    Batch,
    Example,
    MixedBatchStream,
    build_stream,
    collate,
    load_source,
    preprocess_row,
    resize_center_crop,
    resize_cover_crop,
    resize_to_area,
)
from deepgen.nano import world

SIZE = 32


def _png(colour, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _stream(sources, datasets_, batch_size=2, **kwargs) -> MixedBatchStream:
    return MixedBatchStream(datasets_, sources, SIZE, batch_size, **kwargs)


@pytest.fixture(scope="module")
def world_parquet(tmp_path_factory):
    return world.write_parquet(world.dataset("train", 10), tmp_path_factory.mktemp("world") / "train.parquet", SIZE)


def test_resize_center_crop_keeps_the_centre():
    image = Image.new("RGB", (60, 30), (0, 0, 255))
    image.paste((255, 0, 0), (15, 0, 45, 30))  # a red middle third
    out = resize_center_crop(image, 16)
    assert out.size == (16, 16)
    assert out.getpixel((8, 8))[0] > 200 and out.getpixel((0, 8))[0] > 200  # the crop is the red centre


def test_preprocess_row_pair_and_triplet():
    source = DataSourceConfig(path="x")
    pair = preprocess_row({"image": {"bytes": _png((255, 255, 255)), "path": None}, "prompt": " a cat ",
                           "source_image": None}, source, SIZE)
    assert pair.pixel_values.shape == (3, SIZE, SIZE) and not pair.is_edit and pair.prompt == "a cat"
    assert torch.allclose(pair.pixel_values, torch.ones(3, SIZE, SIZE))  # white -> +1
    triplet = preprocess_row({"image": _png((0, 0, 0)), "prompt": "paint it", "source_image": _png((255, 0, 0),
                                                                                                  (50, 80))},
                             source, SIZE)
    assert triplet.is_edit and triplet.source_pixel_values.shape == (3, SIZE, SIZE)
    assert triplet.pixel_values.min() == -1.0


def test_collate_refuses_mixed_kinds():
    pair = Example(torch.zeros(3, 4, 4), "a")
    edit = Example(torch.zeros(3, 4, 4), "b", torch.zeros(3, 4, 4))
    batch = collate([edit, edit])
    assert isinstance(batch, Batch) and batch.is_edit and batch.source_pixel_values.shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="all text-to-image rows or all edit rows"):
        collate([pair, edit])


def test_parquet_world_source_gives_homogeneous_batches(world_parquet, tmp_path):
    source = DataSourceConfig(path=str(world_parquet))  # format auto -> parquet
    dataset = load_source(source, cache_dir=str(tmp_path / "cache"))
    stream = _stream([source], [dataset], batch_size=2, caption_dropout=0.0)
    kinds = set()
    for _ in range(4):
        batch = stream.next_batch()
        assert batch.pixel_values.shape == (2, 3, SIZE, SIZE) and len(batch.prompts) == 2
        assert batch.pixel_values.min() >= -1 and batch.pixel_values.max() <= 1
        assert all(batch.prompts)
        kinds.add(batch.is_edit)
        if batch.is_edit:
            assert batch.source_pixel_values.shape == (2, 3, SIZE, SIZE)
    assert kinds == {True, False}  # the world mixes text-to-image pairs and edit triplets
    assert stream.stats["skipped"] == 0


def test_bad_records_are_skipped_and_counted(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "source_image": datasets.Image(),
                                  "prompt": datasets.Value("string")})
    good = {"bytes": _png((255, 0, 0)), "path": None}
    rows = [
        {"image": good, "source_image": None, "prompt": "red"},
        {"image": {"bytes": b"not an image", "path": None}, "source_image": None, "prompt": "corrupt"},
        {"image": good, "source_image": None, "prompt": "   "},
        {"image": None, "source_image": None, "prompt": "no image"},
        {"image": good, "source_image": {"bytes": b"\x89PNG broken", "path": None}, "prompt": "bad source"},
    ]
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    source = DataSourceConfig(path=str(path), format="parquet")
    stream = _stream([source], [load_source(source, cache_dir=str(tmp_path / "cache"))], batch_size=1,
                     caption_dropout=0.0)
    batches = [stream.next_batch() for _ in range(10)]  # one good row per epoch of 5 rows: ~10 epochs
    assert all(b.pixel_values.shape == (1, 3, SIZE, SIZE) and b.prompts == ["red"] for b in batches)
    stats = stream.stats
    assert stats["rows_used"] == 10
    assert stats["skipped"] == stats["rows_read"] - stats["rows_used"]
    assert stats["skipped"] == sum(v for k, v in stats.items() if k.startswith("skipped_"))
    epochs = stats["rows_read"] // len(rows)  # each full epoch reads every bad row once
    for reason, per_epoch in (("unreadable_image", 2), ("empty_prompt", 1), ("missing_image", 1)):
        assert per_epoch * epochs <= stats[f"skipped_{reason}"] <= per_epoch * (epochs + 1)


def test_imagefolder_with_edit_sources_and_a_corrupt_file(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "t0.png").write_bytes(_png((255, 0, 0)))
    (folder / "s0.png").write_bytes(_png((0, 255, 0)))
    (folder / "t1.png").write_bytes(_png((0, 0, 255)))
    (folder / "broken.png").write_bytes(b"garbage")
    rows = [{"file_name": "t0.png", "source_image_file_name": "s0.png", "prompt": "make it red"},
            {"file_name": "t1.png", "source_image_file_name": None, "prompt": "blue"},
            {"file_name": "broken.png", "source_image_file_name": None, "prompt": "broken"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = DataSourceConfig(path=str(folder))  # format auto -> imagefolder
    stream = _stream([source], [load_source(source, cache_dir=str(tmp_path / "cache"))], batch_size=1,
                     caption_dropout=0.0)
    batches = [stream.next_batch() for _ in range(4)]
    assert {b.prompts[0] for b in batches} == {"make it red", "blue"}
    edit = next(b for b in batches if b.is_edit)
    assert edit.source_pixel_values[0, 1].mean() > 0.9  # the green source, resized to the target size
    assert stream.stats["skipped_unreadable_image"] >= 1


def test_webdataset_shards_with_column_mapping(tmp_path):
    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "000.png", _png((255, 0, 0)))
        add(tar, "000.txt", b"a red picture")
        add(tar, "001.png", b"garbage")
        add(tar, "001.txt", b"unreadable")
        add(tar, "002.png", _png((0, 255, 0)))
        add(tar, "002.txt", b"")
    source = DataSourceConfig(path=str(tmp_path / "shard-{000..000}.tar"), image_column="png", prompt_column="txt",
                              source_image_column=None)
    stream = _stream([source], [load_source(source, cache_dir=str(tmp_path / "cache"))], batch_size=1,
                     caption_dropout=0.0)
    assert [stream.next_batch().prompts for _ in range(2)] == [["a red picture"]] * 2
    assert stream.stats["skipped_unreadable_image"] >= 1 and stream.stats["skipped_empty_prompt"] >= 1


def test_missing_column_error_names_the_columns(world_parquet, tmp_path):
    source = DataSourceConfig(path=str(world_parquet), prompt_column="caption")
    with pytest.raises(ValueError, match="no column 'caption'.*prompt_column"):
        load_source(source, cache_dir=str(tmp_path / "cache"))


def test_resume_gives_the_same_batches(world_parquet, tmp_path):
    sources = [DataSourceConfig(path=str(world_parquet), weight=1.0),
               DataSourceConfig(path=str(world.write_parquet(world.dataset("train", 6, seed=3), tmp_path / "b.parquet",
                                                             SIZE)), weight=2.0)]
    loaded = [load_source(s, cache_dir=str(tmp_path / "cache")) for s in sources]
    reference = _stream(sources, loaded, seed=5)
    for _ in range(3):
        reference.next_batch()
    state = reference.state_dict()
    expected = [reference.next_batch() for _ in range(4)]
    resumed = _stream(sources, loaded, seed=5)
    resumed.load_state_dict(state)
    for want, got in zip(expected, [resumed.next_batch() for _ in range(4)]):
        assert want.prompts == got.prompts and torch.equal(want.pixel_values, got.pixel_values)
        assert want.is_edit == got.is_edit


def test_streamed_source_resumes_exactly(world_parquet, tmp_path, monkeypatch):
    # datasets sleeps 5 s whenever a streamed parquet iterator closes (apache/arrow#45214); not needed here.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.0)
    source = DataSourceConfig(path=str(world_parquet), streaming=True)

    def make():
        return _stream([source], [load_source(source)], batch_size=1, shuffle_buffer=4)

    reference = make()
    reference.next_batch()
    state = reference.state_dict()
    expected = [reference.next_batch().prompts for _ in range(12)]  # crosses an epoch boundary (10 rows)
    resumed = make()
    resumed.load_state_dict(state)
    assert [resumed.next_batch().prompts for _ in range(12)] == expected
    del reference, resumed
    gc.collect()  # close the open iterators while the sleep is still patched out


def test_weighted_mixing_and_rank_sharding():
    rows_a = [{"image": _png((255, 0, 0)), "prompt": f"a{i}"} for i in range(8)]
    rows_b = [{"image": _png((0, 0, 255)), "prompt": f"b{i}"} for i in range(8)]
    sources = [DataSourceConfig(path="a", weight=3.0, source_image_column=None),
               DataSourceConfig(path="b", weight=1.0, source_image_column=None)]
    loaded = [datasets.Dataset.from_list(rows_a), datasets.Dataset.from_list(rows_b)]
    stream = _stream(sources, loaded, batch_size=1, caption_dropout=0.0)
    prompts = [stream.next_batch().prompts[0] for _ in range(200)]
    share_a = sum(p.startswith("a") for p in prompts) / len(prompts)
    assert 0.65 < share_a < 0.85
    ranks = [_stream(sources[:1], loaded[:1], batch_size=1, caption_dropout=0.0, rank=r, world_size=2)
             for r in range(2)]
    seen = [{s.next_batch().prompts[0] for _ in range(4)} for s in ranks]  # one epoch of each rank's shard
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]


def test_caption_dropout_extremes(world_parquet, tmp_path):
    config = DataConfig(sources=[DataSourceConfig(path=str(world_parquet))], resolution=SIZE, caption_dropout=1.0,
                        cache_dir=str(tmp_path / "cache"))
    assert build_stream(config, batch_size=2).next_batch().prompts == ["", ""]
    config.caption_dropout = 0.0
    assert all(build_stream(config, batch_size=2).next_batch().prompts)


def test_edit_caption_dropout_applies_to_edit_batches_only(world_parquet, tmp_path):
    config = DataConfig(sources=[DataSourceConfig(path=str(world_parquet))], resolution=SIZE, caption_dropout=1.0,
                        edit_caption_dropout=0.0, cache_dir=str(tmp_path / "cache"))
    stream = build_stream(config, batch_size=1)
    batches = [stream.next_batch() for _ in range(8)]
    assert {b.is_edit for b in batches} == {True, False}  # the world mixes both kinds
    for batch in batches:
        assert bool(batch.prompts[0]) == batch.is_edit  # t2i captions all dropped, edit instructions all kept


def test_aspect_buckets_keep_the_area_and_round_sides_up_to_32():
    assert resize_to_area(Image.new("RGB", (1024, 768)), 512).size == (608, 448)
    assert resize_to_area(Image.new("RGB", (300, 300)), 512).size == (512, 512)
    assert resize_to_area(Image.new("RGB", (2000, 500)), 512).size == (1024, 256)
    image = Image.new("RGB", (60, 30), (0, 0, 255))
    image.paste((255, 0, 0), (20, 0, 40, 30))  # a red middle third
    source = resize_cover_crop(image, 32, 32)  # a source brought to its target's bucket
    assert source.size == (32, 32) and source.getpixel((16, 16)) == (255, 0, 0)


def test_fix_pixels_batches_group_rows_of_one_size():
    wide, tall = _png((255, 0, 0), size=(64, 32)), _png((0, 0, 255), size=(32, 64))
    rows = [{"image": wide if i % 2 else tall, "prompt": f"p{i}"} for i in range(12)]
    source = DataSourceConfig(path="mixed", source_image_column=None)
    stream = _stream([source], [datasets.Dataset.from_list(rows)], batch_size=2, caption_dropout=0.0,
                     image_process="fix_pixels")
    shapes = {tuple(stream.next_batch().pixel_values.shape) for _ in range(4)}
    assert shapes == {(2, 3, 32, 64), (2, 3, 64, 32)}  # SIZE 32: about 32² px, sides multiples of 32
    assert {key for key in stream.pending} >= {"t2i@64x32", "t2i@32x64"}
