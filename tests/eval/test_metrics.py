from lorakit.eval.metrics import exact_match, normalize


def test_normalize_ignores_case_space_and_outer_punctuation():
    assert normalize('  "Paris."  ') == "paris"
    assert normalize("A\n  b\tc") == "a b c"
    assert normalize("\uff21") == "a"  # full-width letters fold (NFKC)


def test_exact_match():
    assert exact_match('{"name": "Maria"}', '{"name": "Maria"}') == 1.0
    assert exact_match("Paris", "paris.") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
