from facesets.globs import glob_to_regex, matches, selected


def test_double_star_spans_zero_or_more_folders():
    assert matches("a.jpg", ["**/*.jpg"])
    assert matches("x/y/z/a.jpg", ["**/*.jpg"])
    assert not matches("x/a.jpg.txt", ["**/*.jpg"])


def test_case_insensitive_extensions():
    assert matches("DCIM/IMG_0001.JPG", ["**/*.jpg"])


def test_star_stays_in_one_segment():
    assert matches("a/b.jpg", ["a/*.jpg"])
    assert not matches("a/c/b.jpg", ["a/*.jpg"])


def test_exclude_wins_over_include():
    inc, exc = ["**/*.jpg"], ["**/@eaDir/**", "**/thumbs/**"]
    assert selected("2020/a.jpg", inc, exc)
    assert not selected("2020/@eaDir/a.jpg", inc, exc)
    assert not selected("library/thumbs/x/a.jpg", inc, exc)


def test_character_class_and_question_mark():
    assert glob_to_regex("img_?[0-9].jpg").match("img_a7.jpg")
    assert not glob_to_regex("img_?[!0-9].jpg").match("img_a7.jpg")
