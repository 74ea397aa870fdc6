"""xvec.errors: structured fields, and options named in the library's words or as flags."""

from __future__ import annotations

import pytest

from xvec.errors import XvecError, check_at_least, with_flags


def dashes(option: str) -> str:
    return "--" + option.replace("_", "-")


def test_options_become_flags_only_where_named() -> None:
    error = XvecError(
        "norm asnorm needs cohort (a cohort file); cohort_size and data.norm stay",
        options=("norm", "cohort"),
    )
    assert str(error) == "norm asnorm needs cohort (a cohort file); cohort_size and data.norm stay"
    assert with_flags(error, dashes) == (
        "--norm asnorm needs --cohort (a cohort file); cohort_size and data.norm stay"
    )
    assert with_flags(XvecError("norm is fine"), dashes) == "norm is fine"  # no options named


def test_structured_fields_and_numeric_checks() -> None:
    error = XvecError("a.txt:3: bad", file="a.txt", line=3, field="label", hint="fix it")
    assert (error.file, error.line, error.field, error.hint) == ("a.txt", 3, "label", "fix it")
    with pytest.raises(XvecError) as caught:
        check_at_least("batch_size", 0, 1)
    assert str(caught.value) == "batch_size 0: must be a number >= 1"
    assert with_flags(caught.value, dashes) == "--batch-size 0: must be a number >= 1"
    check_at_least("batch_size", None, 1)  # not given: passes
    with pytest.raises(XvecError, match="must be a number >= 0"):
        check_at_least("tolerance", float("nan"), 0)
