"""Pre-flight label and image validation over real manifest files and ImageFolder trees."""
from __future__ import annotations

import pytest
import torch

from stablesweep.data import DataError, ProblemKind, build_data, validate_labels
from stablesweep.data.manifests import scan
from stablesweep.data.mixing import LabelSpace, MixedDataset

from .conftest import make_config, write_manifest, write_png


def _ds(train, val=None, n=3, **kw):
    d = {"num_classes": n, "train": train, **kw}
    if val is not None:
        d["val"] = val
    return d


def test_clean_manifest_reports_counts_and_builds(root):
    tr = write_manifest(root, "food", [0, 1, 2, 1])
    va = write_manifest(root, "food", [2, 0], split="val")
    cfg = make_config(root, {"food": _ds(tr, va)})
    rep = validate_labels(cfg)
    assert rep.ok(), rep.format()
    s = rep.get("food", "train")
    assert (s.count, s.min, s.max, s.distinct) == (4, 0, 2, 3)
    assert rep.get("food", "val").count == 2
    table = rep.format()
    assert "food" in table and "distinct" in table and "manifest" in table
    md = build_data(cfg)
    assert md.train_size == 4 and md.eval_names == ["food"] and md.eval_size("food") == 2


def test_one_based_labels_are_recognised_and_named(root):
    tr = write_manifest(root, "food101", [1, 2, 3, 3, 1])
    cfg = make_config(root, {"food101": _ds(tr, n=3)})
    rep = validate_labels(cfg)
    assert not rep.ok()
    first = rep.problems[0]  # the split's diagnosis first, then its lines
    assert (first.kind, first.dataset, first.split, first.file, first.line, first.value) == \
        (ProblemKind.ONE_BASED, "food101", "train", "food101_train.jsonl", None, (1, 3))
    assert first.message.startswith("food101: food101_train.jsonl: labels look 1-based")
    assert "subtract 1" in first.message
    # each out-of-range line is named with file:line too
    assert [(p.kind, p.line, p.value, p.message) for p in rep.problems[1:]] == [
        (ProblemKind.LABEL_OUT_OF_RANGE, 3, 3, "food101: food101_train.jsonl:3: label 3 is outside [0, 3)"),
        (ProblemKind.LABEL_OUT_OF_RANGE, 4, 3, "food101: food101_train.jsonl:4: label 3 is outside [0, 3)")]
    with pytest.raises(DataError, match="1-based"):
        build_data(cfg)


def test_label_equal_to_num_classes_and_negative_named_with_file_and_line(root):
    tr = write_manifest(root, "food101", [0, 1, 3, 2, -1, 0])
    cfg = make_config(root, {"food101": _ds(tr)})
    rep = validate_labels(cfg)
    assert [(p.kind, p.file, p.line, p.value) for p in rep.problems] == [
        (ProblemKind.LABEL_OUT_OF_RANGE, "food101_train.jsonl", 3, 3),
        (ProblemKind.LABEL_OUT_OF_RANGE, "food101_train.jsonl", 5, -1)]  # min is -1, not 1: not 1-based
    assert [p.message for p in rep.problems] == ["food101: food101_train.jsonl:3: label 3 is outside [0, 3)",
                                                 "food101: food101_train.jsonl:5: label -1 is outside [0, 3)"]
    s = rep.get("food101", "train")
    assert (s.min, s.max) == (-1, 3)
    assert s.label_counts == {-1: 1, 0: 2, 1: 1, 2: 1, 3: 1}
    assert (s.bad_label_lines, s.fatal) == (2, 0)  # only their labels are wrong: on_bad_label skip drops them
    with pytest.raises(DataError) as ei:
        build_data(cfg)
    assert "food101_train.jsonl:3: label 3" in str(ei.value) and "food101_train.jsonl:5: label -1" in str(ei.value)


def test_bad_json_missing_key_and_non_integer_labels(root):
    tr = write_manifest(root, "d", [0, 1, 2, 0, 1, 2], raw_lines={
        2: '{"image": "img/d/train/1.png", "label": 1',  # truncated
        3: '{"image": "img/d/train/2.png"}',
        4: '{"image": "img/d/train/3.png", "label": true}',
        5: '{"image": "img/d/train/4.png", "label": "1"}',
        6: '{"image": "img/d/train/5.png", "label": 2.0}',
    })
    cfg = make_config(root, {"d": _ds(tr)})
    probs = validate_labels(cfg).problems
    assert [(p.kind, p.line, p.value) for p in probs] == [
        (ProblemKind.BAD_JSON, 2, None), (ProblemKind.MISSING_KEY, 3, "label"), (ProblemKind.LABEL_NOT_INT, 4, True),
        (ProblemKind.LABEL_NOT_INT, 5, "1"), (ProblemKind.LABEL_NOT_INT, 6, 2.0)]
    msgs = [p.message for p in probs]
    assert msgs[0].startswith("d: d_train.jsonl:2: bad JSON")
    assert msgs[1].startswith("d: d_train.jsonl:3: missing key 'label'")
    assert msgs[2].startswith("d: d_train.jsonl:4: label true is a boolean")
    assert msgs[3].startswith('d: d_train.jsonl:5: label "1" is a string')
    assert msgs[4].startswith("d: d_train.jsonl:6: label 2.0 is a number with a fraction")


def test_custom_keys_are_used(root):
    (root / "m.jsonl").write_text('{"file": "a.png", "y": 1}\n{"image": "a.png", "label": 0}\n')
    write_png(root / "a.png")
    cfg = make_config(root, {"d": _ds("m.jsonl", n=2, image_key="file", label_key="y")})
    probs = validate_labels(cfg).problems
    assert [(p.kind, p.line, p.value) for p in probs] == [(ProblemKind.MISSING_KEY, 2, "file"),
                                                          (ProblemKind.MISSING_KEY, 2, "y")]
    assert [p.message for p in probs] == [
        "d: m.jsonl:2: missing key 'file' (image_key; the line has 'image', 'label')",
        "d: m.jsonl:2: missing key 'y' (label_key; the line has 'image', 'label')"]


def test_missing_image_named_with_manifest_line(root):
    tr = write_manifest(root, "d", [0, 1, 2])
    (root / "img/d/train/1.png").unlink()
    cfg = make_config(root, {"d": _ds(tr)})
    probs = validate_labels(cfg).problems
    missing = str(root / "img/d/train/1.png")
    assert [(p.kind, p.line, p.value) for p in probs] == [(ProblemKind.MISSING_IMAGE, 2, missing)]
    assert probs[0].message.startswith("d: d_train.jsonl:2: image ") and "1.png not found" in probs[0].message
    # with image checks off, the missing file is not looked at
    assert validate_labels(cfg, check_images="none").ok()


@pytest.mark.parametrize("level", ["header", "full"])
def test_corrupt_image_is_a_problem(root, level):
    tr = write_manifest(root, "d", [0, 1, 2])
    (root / "img/d/train/2.png").write_bytes(b"\x89PNG garbage, not an image at all" * 3)
    cfg = make_config(root, {"d": _ds(tr)}, data={"verify_images": level})
    probs = validate_labels(cfg, check_images=level).problems
    assert [(p.kind, p.line) for p in probs] == [(ProblemKind.UNREADABLE_IMAGE, 3)]
    assert probs[0].message.startswith("d: d_train.jsonl:3: image ") and "unreadable" in probs[0].message
    with pytest.raises(DataError, match="unreadable"):
        build_data(cfg)  # check_images=True follows data.verify_images


def test_truncated_png_caught_by_full_check(root):
    tr = write_manifest(root, "d", [0, 1])
    p = root / "img/d/train/1.png"
    write_png(p, size=64)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    cfg = make_config(root, {"d": _ds(tr, n=2)})
    assert not validate_labels(cfg, check_images="full").ok()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_file_cut_short_is_caught_by_the_header_check(root, fmt):
    """A copy that stopped half-way: the header (and for a JPEG, every marker before the scan) is
    whole, so PIL's verify passes it; the missing end marker sends it to a decode, which fails.
    A whole file, and one with bytes after its end marker (as some cameras write), pass."""
    import io

    import numpy as np
    from PIL import Image

    tr = write_manifest(root, "d", [0, 1, 2])
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    (root / "img/d/train/1.png").write_bytes(data[: len(data) * 2 // 3])
    (root / "img/d/train/2.png").write_bytes(data + b"\0" * 2000)
    cfg = make_config(root, {"d": _ds(tr)})
    probs = validate_labels(cfg, check_images="header").problems
    assert [(p.kind, p.line) for p in probs] == [(ProblemKind.UNREADABLE_IMAGE, 2)], probs
    assert "d_train.jsonl:2" in probs[0].message and "truncated" in probs[0].message.lower()


def test_all_problems_of_all_datasets_listed_before_anything_is_built(root):
    a = write_manifest(root, "a", [0, 1, 5])
    b = write_manifest(root, "b", [0, 1, 0], raw_lines={2: "not json"})
    cfg = make_config(root, {"a": _ds(a), "b": _ds(b, "missing_val.jsonl")})
    with pytest.raises(DataError) as ei:
        build_data(cfg)
    msg = str(ei.value)
    assert "a: a_train.jsonl:3: label 5 is outside [0, 3)" in msg
    assert "b: b_train.jsonl:2: bad JSON" in msg
    assert "b: missing_val.jsonl: val manifest not found" in msg
    assert ei.value.report is not None
    assert [(p.kind, p.dataset, p.split) for p in ei.value.report.problems] == [
        (ProblemKind.LABEL_OUT_OF_RANGE, "a", "train"), (ProblemKind.BAD_JSON, "b", "train"),
        (ProblemKind.MISSING_FILE, "b", "val")]


def test_missing_val_is_fine_but_reported(root):
    tr = write_manifest(root, "d", [0, 1, 2])
    cfg = make_config(root, {"d": _ds(tr)})
    rep = validate_labels(cfg)
    assert rep.ok()
    assert any("no val split" in n for n in rep.notes)
    md = build_data(cfg)
    assert md.eval_names == []
    with pytest.raises(KeyError):
        md.eval_size("d")


def test_fewer_distinct_labels_is_a_note_not_an_error(root):
    tr = write_manifest(root, "d", [0, 0, 2])
    cfg = make_config(root, {"d": _ds(tr, n=4)})
    rep = validate_labels(cfg)
    assert rep.ok()
    assert any("2 of 4 classes present" in n and "1, 3" in n for n in rep.notes)


def test_skip_mode_keeps_bad_label_samples_and_drops_them_in_batches(root):
    tr = write_manifest(root, "d", [0, 1, 7, 2, 1, 0, 2, 9])
    cfg = make_config(root, {"d": _ds(tr)}, loss={"on_bad_label": "skip"})
    assert not validate_labels(cfg).ok()  # still reported
    with pytest.warns(UserWarning, match=r"2 sample\(s\) .*the first: d: d_train.jsonl:3: label 7"):
        md = build_data(cfg)
    it = md.train_batches(8, seed=0)
    b = next(it)
    assert b.dropped == 2 and len(b.labels) == 6
    assert sorted(b.local_labels.tolist()) == [0, 0, 1, 1, 2, 2]
    # with on_bad_label: error the same data does not build
    with pytest.raises(DataError):
        build_data(make_config(root, {"d": _ds(tr)}))


def test_runtime_guard_in_collate(root):
    """The host-side guard: an out-of-range label raises (error) or is dropped and counted (skip)."""
    tr = write_manifest(root, "d", [0, 1, 3])
    cfg = make_config(root, {"d": _ds(tr, n=3)}, loss={"on_bad_label": "skip"})
    _, sources = scan(cfg)
    space = LabelSpace.from_config(cfg)
    with pytest.raises(DataError, match=r"d: d_train.jsonl:3: label 3 is outside \[0, 3\)"):
        MixedDataset([sources[("d", "train")]], space, "error", 8).__getitems__([0, 2, 1])
    ds = MixedDataset([sources[("d", "train")]], space, "skip", 8)
    b = ds.__getitems__([0, 2, 1])
    assert b.dropped == 1 and b.local_labels.tolist() == [0, 1]
    empty = ds.__getitems__([2])
    assert empty.images.shape == (0, 3, 8, 8) and empty.segments == () and empty.dropped == 1


# ---- ImageFolder ------------------------------------------------------------------------------

def _folder(root, split, classes, per=2):
    for c in classes:
        for i in range(per):
            write_png(root / "imgs" / split / c / f"{i}.png", value=10 * i)


def test_imagefolder_loads_with_torchvision_class_order(root):
    _folder(root, "train", ["cat", "ant", "bee"])
    _folder(root, "val", ["cat", "ant"], per=1)  # bee absent: must not shift cat's index
    cfg = make_config(root, {"bugs": _ds("imgs/train", "imgs/val", n=3)})
    rep = validate_labels(cfg)
    assert rep.ok(), rep.format()
    assert rep.get("bugs", "train").count == 6 and rep.get("bugs", "train").source == "folder"
    md = build_data(cfg)
    labels = sorted(b for batch in md.eval_batches("bugs", 8) for b in batch.local_labels.tolist())
    assert labels == [0, 2]  # ant=0, cat=2 (sorted folder names), as in train


def test_imagefolder_class_count_mismatch_is_an_error(root):
    _folder(root, "train", ["a", "b"])
    cfg = make_config(root, {"d": _ds("imgs/train", n=3)})
    probs = validate_labels(cfg).problems
    assert [(p.kind, p.file, p.value) for p in probs] == [(ProblemKind.CLASS_FOLDERS, "imgs/train", ["a", "b"])]
    assert "2 class folders, but num_classes is 3" in probs[0].message and probs[0].message.startswith("d: ")
    with pytest.raises(DataError, match="num_classes is 3"):
        build_data(cfg)


def test_imagefolder_corrupt_file_and_unknown_val_class(root):
    _folder(root, "train", ["a", "b"])
    _folder(root, "val", ["a", "zzz"], per=1)
    (root / "imgs/train/b/1.png").write_bytes(b"garbage")
    cfg = make_config(root, {"d": _ds("imgs/train", "imgs/val", n=2)})
    probs = validate_labels(cfg).problems
    assert any(p.kind == ProblemKind.UNREADABLE_IMAGE and p.value.endswith("b/1.png") and "unreadable" in p.message
               for p in probs)
    assert any(p.kind == ProblemKind.CLASS_FOLDERS and p.split == "val" and p.value == ["zzz"]
               and "class folders not in the train split: zzz" in p.message for p in probs)


def test_images_are_resized_rgb_uint8(root):
    (root / "m.jsonl").write_text('{"image": "big.png", "label": 0}\n{"image": "gray.png", "label": 1}\n')
    write_png(root / "big.png", size=40)
    from PIL import Image
    Image.new("L", (5, 9), 200).save(root / "gray.png")
    cfg = make_config(root, {"d": _ds("m.jsonl", n=2)}, data={"image_size": 12})
    b = next(build_data(cfg).train_batches(2, seed=0))
    assert b.images.shape == (2, 3, 12, 12) and b.images.dtype == torch.uint8
    assert sorted(b.images.flatten(1).float().mean(1).tolist()) == [128.0, 200.0]  # gray -> RGB, 128 resized


def test_the_folder_layout_is_read_as_torchvision_reads_it(root):
    """`manifests.find_classes` and `make_dataset` stand in for torchvision's (so a folder is checked
    without importing torch): the same classes, files and order, the same extensions."""
    from torchvision.datasets import folder as tv

    from stablesweep.data.discover import IMG_EXTENSIONS
    from stablesweep.data.manifests import find_classes, make_dataset

    for rel in ("b/1.png", "b/0.JPG", "a/deep/er/2.png", "a/x.txt", "a/y.webp", "c/0.tiff", "a/.hidden.png"):
        write_png(root / "tree" / rel) if not rel.endswith(".txt") else (root / "tree" / rel).write_text("no")
    (root / "tree" / "empty").mkdir()
    tree = root / "tree"
    assert IMG_EXTENSIONS == tv.IMG_EXTENSIONS
    assert find_classes(tree) == tv.find_classes(tree)
    mapping = find_classes(tree)[1]
    assert make_dataset(str(tree), mapping) == tv.make_dataset(str(tree), mapping, extensions=tv.IMG_EXTENSIONS,
                                                                allow_empty=True)
    assert len(make_dataset(str(tree), mapping)) == 6
    with pytest.raises(FileNotFoundError):
        find_classes(tree / "empty")
