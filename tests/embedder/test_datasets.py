"""Folder trees and CSVs become labelled images; problems are reported, not raised."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.datasets import load_csv, load_dataset, load_folder_tree


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_leaf_folders_are_categories_and_ancestors_are_parents(tmp_path: Path) -> None:
    touch(tmp_path / "Fruit/Apple/Granny-Smith/1.jpg")
    touch(tmp_path / "Fruit/Apple/Gala/2.png")
    touch(tmp_path / "Fruit/Pear/3.webp")
    touch(tmp_path / "Fruit/Pear/notes.txt")
    dataset = load_folder_tree(tmp_path)
    assert dataset.parents == {
        "Fruit": None,
        "Apple": "Fruit",
        "Granny-Smith": "Apple",
        "Gala": "Apple",
        "Pear": "Fruit",
    }
    order = dataset.categories()
    assert order.index("Fruit") < order.index("Apple") < order.index("Gala")
    assert {(i.path.name, i.category) for i in dataset.images} == {
        ("1.jpg", "Granny-Smith"),
        ("2.png", "Gala"),
        ("3.webp", "Pear"),
    }
    assert dataset.problems == []
    assert [(s.path.name, s.reason) for s in dataset.skipped] == [
        (
            "notes.txt",
            "not an image nearcat reads: JPEG, PNG and WebP only (.jpg, .jpeg, .png, .webp)",
        )
    ]


def test_category_names_are_nfc_however_the_file_system_spells_them(tmp_path: Path) -> None:
    touch(tmp_path / "Cafe\u0301/1.jpg")  # decomposed, as macOS names folders
    assert [i.category for i in load_folder_tree(tmp_path).images] == ["Caf\u00e9"]
    (tmp_path / "labels.csv").write_text(
        "image,label\nCafe\u0301/1.jpg,Cafe\u0301\nCafe\u0301/1.jpg,Th\u00e9\n", encoding="utf-8"
    )
    dataset = load_csv(tmp_path / "labels.csv", exclude_labels=["The\u0301"])
    assert [i.category for i in dataset.images] == ["Caf\u00e9"]


def test_every_file_left_out_is_listed_with_the_reason(tmp_path: Path) -> None:
    """Nothing is silently ignored: an import says what it left out and why."""
    for name in ("1.jpg", "2.JPEG", "3.gif", "4.avif", "5.heic", "notes.txt", ".DS_Store"):
        touch(tmp_path / "Shoes" / name)
    touch(tmp_path / "Shoes" / "._1.jpg")  # macOS's metadata beside a photo: not a JPEG
    touch(tmp_path / "Hats" / "only.tiff")  # a folder of nothing readable is no category
    dataset = load_folder_tree(tmp_path)
    assert sorted(i.path.name for i in dataset.images) == ["1.jpg", "2.JPEG"]
    assert list(dataset.parents) == ["Shoes"]
    reasons = {s.path.name: s.reason for s in dataset.skipped}
    assert sorted(reasons) == [
        ".DS_Store",
        "._1.jpg",
        "3.gif",
        "4.avif",
        "5.heic",
        "notes.txt",
        "only.tiff",
    ]
    assert reasons["3.gif"] == (
        "GIF image: nearcat reads JPEG, PNG and WebP only; convert it to add it"
    )
    assert reasons["4.avif"].startswith("AVIF image") and reasons["5.heic"].startswith("HEIC")
    assert reasons["only.tiff"].startswith("TIFF image")
    assert reasons["notes.txt"].startswith("not an image nearcat reads")
    assert reasons["._1.jpg"].startswith("a hidden file")


def test_clashing_folder_names_are_reported_and_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "Men/Shirts/1.jpg")
    touch(tmp_path / "Women/Shirts/2.jpg")
    touch(tmp_path / "loose.jpg")
    dataset = load_folder_tree(tmp_path)
    assert [i.path.name for i in dataset.images] == ["1.jpg"]
    assert any("'Shirts' is used by both" in p for p in dataset.problems)
    assert {(s.path.name, s.reason.split(",")[0]) for s in dataset.skipped} == {
        ("2.jpg", "category name 'Shirts' is used by another folder too (see above)"),
        ("loose.jpg", f"directly in {tmp_path}"),
    }


def test_csv_with_template_group_exclusions_and_missing_files(tmp_path: Path) -> None:
    touch(tmp_path / "images/a.jpg")
    touch(tmp_path / "images/b.jpg")
    (tmp_path / "data.csv").write_text(
        "image,sender_id,label\na,s1,Shoes\nb,s2,Skip\nc,s3,Hat\n,s4,\n"
    )
    dataset = load_csv(
        tmp_path / "data.csv",
        path_template="images/{}.jpg",
        group_column="sender_id",
        exclude_labels=["Skip"],
    )
    assert [(i.path.name, i.category, i.group) for i in dataset.images] == [
        ("a.jpg", "Shoes", "s1")
    ]
    assert any("c.jpg" in p and "does not exist" in p for p in dataset.problems)
    assert not any("--path-template" in p for p in dataset.problems)  # some images were found


def test_a_csv_none_of_whose_images_exist_points_at_the_path_template(tmp_path: Path) -> None:
    touch(tmp_path / "images/a.jpg")
    (tmp_path / "data.csv").write_text("image,label\na,Shoes\n")
    dataset = load_csv(tmp_path / "data.csv")  # the ids are not paths by themselves
    assert dataset.images == []
    assert any("--path-template" in p and "images/{}.jpg" in p for p in dataset.problems)


def test_a_blank_group_cell_leaves_the_image_ungrouped(tmp_path: Path) -> None:
    """Not one group "" that would keep every ungrouped image on one side of a split."""
    for name in "abcd":
        touch(tmp_path / f"{name}.jpg")
    (tmp_path / "data.csv").write_text(
        "image,label,sender_id\na.jpg,Hat,\nb.jpg,Hat,  \nc.jpg,Hat\nd.jpg,Hat, s1 \n"
    )
    dataset = load_csv(tmp_path / "data.csv", group_column="sender_id")
    assert [i.group for i in dataset.images] == [None, None, None, "s1"]


def test_csv_column_errors_name_the_columns(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("file,class\n")
    with pytest.raises(ValueError, match="no column 'image'; its columns are file, class"):
        load_dataset(tmp_path / "data.csv")


def test_source_must_be_a_folder_or_a_csv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a folder"):
        load_dataset(tmp_path / "missing.txt")
